"""DICOM sources end to end through the CLI (issue 14).

Real files that pydicom ships (``pydicom/data/test_files``: 16-bit CT/MR, JPEG 2000, JPEG
extended, JPEG-LS, RLE, big endian, deflated, colour, palette, multi-frame, truncated, no
pixel data) and generated ones (MONOCHROME1, VOI LUT, sigmoid window, extensionless CR
export, an unknown transfer syntax; ``tools/make_dicom.py``) are built from class folders.
Each either converts, with pixels equal to a reference computed here from pydicom's own
``apply_modality_lut`` / ``apply_voi_lut`` (MONOCHROME1 inverted), the documented 8-bit
scaling and shardgen's fit/resize, or is skipped with the right reason. No patient
identifier of any source reaches any output file.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, apply_windowing

import make_dicom as md
from conftest import run_cli
from shardgen.imaging.image import fit_square, to_gray

SIZE = 64

#: Files pydicom ships that convert: path in SRC -> test file name.
CONVERTS = {
    "ct/CT_small.dcm": "CT_small.dcm",                       # 16-bit signed, rescale, no window
    "ct/693_J2KI.dcm": "693_J2KI.dcm",                       # JPEG 2000 lossy, window + rescale
    "nm/JPEG2000.dcm": "JPEG2000.dcm",                       # JPEG 2000, 1024x256
    "nm/JPGExtended.dcm": "JPGExtended.dcm",                 # JPEG extended 12-bit
    "mr/MR_small.dcm": "MR_small.dcm",                       # 16-bit with a window
    "mr/MR_small_RLE.dcm": "MR_small_RLE.dcm",
    "mr/MR_small_jp2klossless.dcm": "MR_small_jp2klossless.dcm",
    "mr/MR_small_jpeg_ls_lossless.dcm": "MR_small_jpeg_ls_lossless.dcm",
    "mr/MR_small_bigendian.dcm": "MR_small_bigendian.dcm",
    "mr/image_dfl.dcm": "image_dfl.dcm",                     # deflated transfer syntax
    "sc/SC_rgb_jpeg_dcmtk.dcm": "SC_rgb_jpeg_dcmtk.dcm",     # YBR_FULL JPEG baseline
    "sc/SC_ybr_full_422_uncompressed.dcm": "SC_ybr_full_422_uncompressed.dcm",
    "sc/SC_rgb_rle_16bit.dcm": "SC_rgb_rle_16bit.dcm",       # 16 bits per channel
    "sc/SC_rgb_gdcm_KY.dcm": "SC_rgb_gdcm_KY.dcm",           # RGB JPEG 2000
    "sc/examples_palette.dcm": "examples_palette.dcm",       # PALETTE COLOR
}
#: Files pydicom ships that are skipped: path in SRC -> (test file name, reason contains).
SKIPS = {
    "mr/rtplan.dcm": ("rtplan.dcm", "DICOM file without pixel data (RT Plan Storage)"),
    "mr/test-SR.dcm": ("test-SR.dcm", "DICOM file without pixel data (Comprehensive SR Storage)"),
    "mr/rtdose.dcm": ("rtdose.dcm", "multi-frame DICOM (15 frames)"),
    "sc/SC_rgb_rle_2frame.dcm": ("SC_rgb_rle_2frame.dcm", "multi-frame DICOM (2 frames)"),
    "mr/MR_truncated.dcm": ("MR_truncated.dcm", "truncated DICOM pixel data"),
}
#: Copies cut short here: path in SRC -> (test file name, bytes kept (negative: cut from the end)).
CUTS = {"ct/CT_small_cut.dcm": ("CT_small.dcm", -1000), "nm/JPEG2000_cut.dcm": ("JPEG2000.dcm", 1654),
        "mr/MR_small_RLE_cut.dcm": ("MR_small_RLE.dcm", -500)}
#: Generated files that convert.
GENERATED = ("cr/mono1.dcm", "cr/voilut.dcm", "cr/sigmoid.dcm", "cr/CR_EXPORT_0001", "cr/1.2.826.0.1.99.7")


def _generate(src: Path) -> None:
    """Synthetic CR images (tools/make_dicom.py) covering what pydicom's files lack."""
    a = md.xray16(0, SIZE)[:, :40]  # 40 wide, SIZE high: padded by --fit pad, not resized
    md.write(str(src / "cr/mono1.dcm"), md.dicom_dataset(a, "mono1", photometric="MONOCHROME1", bits_stored=12,
                                                         window=(1900, 2500), rescale=(2.0, -100.0)))
    lut = np.linspace(40, 3000, 4096).astype(np.uint16)
    md.write(str(src / "cr/voilut.dcm"), md.dicom_dataset(md.xray16(1, 40), "voilut", bits_stored=12, voi_lut=lut,
                                                          voi_lut_bits=12, window=(100, 50)))
    ds = md.dicom_dataset(md.xray16(2, 40), "sigmoid", bits_stored=12, window=(2000, 1000), view_position="AP")
    ds.VOILUTFunction = "SIGMOID"
    md.write(str(src / "cr/sigmoid.dcm"), ds)
    # An extensionless CR export (found by its DICM preamble), MONOCHROME1 without a window.
    md.write(str(src / "cr/CR_EXPORT_0001"), md.dicom_dataset(md.xray16(3, 80), "cr", photometric="MONOCHROME1",
                                                               bits_stored=12, view_position=None))
    # A UID as the file name (extension ".7"), 16-bit signed.
    md.write(str(src / "cr/1.2.826.0.1.99.7"), md.dicom_dataset(md.xray16(4, 40).astype(np.int16) - 1000,
                                                                 "uid", modality="DX"))
    # A transfer syntax pydicom has no decoder for (JPEG XL): written as HTJ2K, UID patched.
    from pydicom.encaps import encapsulate

    ds = md.dicom_dataset(md.xray16(5, 32), "jxl", bits_stored=12)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.201"
    ds.PixelData = encapsulate([b"\xff\x0a" + bytes(64)])
    ds["PixelData"].VR = "OB"
    md.write(str(src / "cr/jxl.dcm"), ds)
    raw = (src / "cr/jxl.dcm").read_bytes()
    (src / "cr/jxl.dcm").write_bytes(raw.replace(b"1.2.840.10008.1.2.4.201\0", b"1.2.840.10008.1.2.4.110\0"))
    (src / "cr/README").write_text("exported from the PACS\n" * 20)  # extensionless, not DICOM
    (src / "cr/garbage.dcm").write_bytes(b"not dicom at all " * 40)


@pytest.fixture(scope="module")
def dicom_src(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("dicom") / "src"
    for rel, name in CONVERTS.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(get_testdata_file(name), src / rel)
    for rel, (name, _) in SKIPS.items():
        shutil.copyfile(get_testdata_file(name), src / rel)
    for rel, (name, keep) in CUTS.items():
        data = Path(get_testdata_file(name)).read_bytes()
        (src / rel).write_bytes(data[:keep])
    (src / "cr").mkdir()
    _generate(src)
    return src


@pytest.fixture(scope="module")
def dicom_build(dicom_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("dicom-out") / "out"
    p = run_cli("build", dicom_src, out, "--size", SIZE, "--workers", "2", "--progress", "false",
                "--splits", "train=0.5,test=0.5", check=True)
    return out, p


def read_samples(out: Path) -> dict[str, tuple[dict, np.ndarray]]:
    """Every sample of a build: source path -> (its .json, its decoded pixels)."""
    found: dict[str, tuple[dict, np.ndarray]] = {}
    for tar_path in sorted(out.glob("*/*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(tar_path) as tf:
            for m in tf.getmembers():
                key, ext = m.name.split(".", 1)
                members.setdefault(key, {})[ext] = tf.extractfile(m).read()
        for parts in members.values():
            meta = json.loads(parts["json"])
            found[meta["source"]] = (meta, np.asarray(Image.open(io.BytesIO(parts["png"]))))
    return found


def _to8(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """docs/dicom.md step 3: round((clip(v, lo, hi) - lo) * 255 / (hi - lo))."""
    if hi <= lo:
        return np.zeros(v.shape, np.uint8)
    return np.rint((np.clip(np.asarray(v, np.float64), lo, hi) - lo) * 255.0 / (hi - lo)).astype(np.uint8)


def reference(path: Path, window: str = "auto") -> np.ndarray:
    """The expected SIZE x SIZE pixels, from pydicom's LUT functions and shardgen's fit/resize."""
    ds = pydicom.dcmread(path, force=True)
    arr, pi = ds.pixel_array, ds.PhotometricInterpretation
    if pi in ("MONOCHROME1", "MONOCHROME2"):
        m = apply_modality_lut(arr, ds)
        if window == "auto" and "VOILUTSequence" in ds:
            n, first = ds.VOILUTSequence[0].LUTDescriptor[:2]
            entries = apply_voi_lut(np.arange(first, first + n), ds)  # the LUT's output range
            g = _to8(apply_voi_lut(m, ds), entries.min(), entries.max())
        elif window == "auto" and "WindowCenter" in ds:
            with np.errstate(over="ignore"):  # the window's output range
                lo, hi = apply_windowing(np.array([-1e300, 1e300]), ds)
            g = _to8(apply_voi_lut(m, ds), lo, hi)
        else:
            g = _to8(m, float(m.min()), float(m.max()))
        if pi == "MONOCHROME1":
            g = 255 - g
    else:
        rgb = apply_color_lut(arr, ds) if pi == "PALETTE COLOR" else arr
        top = 255 if rgb.dtype == np.uint8 else 65535 if pi == "PALETTE COLOR" else 2 ** ds.BitsStored - 1
        rgb8 = ((rgb.astype(np.uint64) * 255 + top // 2) // top).astype(np.uint8)
        g = to_gray(Image.fromarray(rgb8, "RGB"))[0]
    return fit_square(g, SIZE, "pad")


def test_dicom_sources_convert_or_are_skipped_with_reasons(dicom_src, dicom_build):
    out, p = dicom_build
    assert "Traceback" not in p.stderr
    samples = read_samples(out)
    expected = set(CONVERTS) | set(GENERATED)
    assert set(samples) == expected
    for rel in sorted(expected):
        meta, pixels = samples[rel]
        ref = reference(dicom_src / rel)
        assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.uint8, rel
        assert np.array_equal(pixels, ref), f"{rel}: max difference {np.abs(pixels.astype(int) - ref).max()}"
        assert meta["dicom"]["photometric"] == str(pydicom.dcmread(dicom_src / rel).PhotometricInterpretation)
    skipped = {r["path"]: r["reason"] for r in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}
    want = {rel: reason for rel, (_, reason) in SKIPS.items()}
    want.update({rel: "truncated DICOM" for rel in CUTS})
    want["cr/jxl.dcm"] = "unsupported DICOM transfer syntax 1.2.840.10008.1.2.4.110: no decoder exists"
    want["cr/README"] = "not an image file (extension 'none')"
    want["cr/garbage.dcm"] = "not a DICOM image"
    assert set(skipped) == set(want)
    for rel, reason in want.items():
        assert reason in skipped[rel], (rel, skipped[rel])


def test_dicom_json_records_the_audit_attributes(dicom_build):
    out, _ = dicom_build
    samples = read_samples(out)
    assert samples["mr/MR_small.dcm"][0]["dicom"] == {
        "photometric": "MONOCHROME2", "bits_stored": 16, "window": {"center": 600.0, "width": 1600.0},
        "modality": "MR", "transfer_syntax": "1.2.840.10008.1.2.1"}
    assert samples["cr/mono1.dcm"][0]["dicom"] == {
        "photometric": "MONOCHROME1", "bits_stored": 12, "window": {"center": 1900.0, "width": 2500.0},
        "modality": "CR", "view_position": "PA", "transfer_syntax": "1.2.840.10008.1.2.1"}
    assert samples["cr/voilut.dcm"][0]["dicom"]["window"] == "voi_lut"  # the LUT wins over the window
    assert samples["cr/sigmoid.dcm"][0]["dicom"]["window"] == {"center": 2000.0, "width": 1000.0,
                                                                "function": "SIGMOID"}
    assert samples["cr/CR_EXPORT_0001"][0]["dicom"]["window"] == "none"
    assert "view_position" not in samples["cr/CR_EXPORT_0001"][0]["dicom"]
    assert samples["ct/693_J2KI.dcm"][0]["dicom"]["transfer_syntax"] == "1.2.840.10008.1.2.4.91"
    meta = samples["cr/mono1.dcm"][0]
    assert list(meta) == ["class", "source", "width", "height", "mode", "pixels", "dicom"]
    assert (meta["width"], meta["height"], meta["mode"]) == (40, SIZE, "I;16")
    assert samples["sc/SC_rgb_jpeg_dcmtk.dcm"][0]["mode"] == "RGB"
    manifest = json.loads((out / "manifest.json").read_text())
    assert "dicom_window" not in manifest["config"]


def _window_8bit(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2.1, LINEAR, onto 0..255, written out independently of pydicom."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.clip(y, 0, 255)


def test_dicom_pixels_follow_the_standard_window(dicom_src, dicom_build):
    """Independently of pydicom: rescale, the linear window of the standard, MONOCHROME1 inverted."""
    samples = read_samples(dicom_build[0])
    raw = pydicom.dcmread(dicom_src / "mr/MR_small.dcm").pixel_array.astype(np.float64)  # 64x64: no resize
    got = samples["mr/MR_small.dcm"][1].astype(np.float64)
    assert np.abs(got - _window_8bit(raw, 600, 1600)).max() <= 1
    stored = pydicom.dcmread(dicom_src / "cr/mono1.dcm").pixel_array.astype(np.float64) * 2.0 - 100.0
    expect = 255 - _window_8bit(stored, 1900, 2500)
    x0 = (SIZE - 40) // 2  # 40 x SIZE is centred on the SIZE x SIZE canvas (black bars), no resize
    got = samples["cr/mono1.dcm"][1][:, x0:x0 + 40].astype(np.float64)
    assert np.abs(got - expect).max() <= 1
    # MONOCHROME1 comes out as a positive: its lowest stored values are the brightest pixels.
    assert got[stored == stored.min()].mean() > got[stored == stored.max()].mean()


def _identifiers(path: Path) -> set[str]:
    ds = pydicom.dcmread(path, force=True)
    keys = ("PatientName", "PatientID", "PatientBirthDate", "StudyDate", "SeriesDate", "AcquisitionDate",
            "ContentDate", "InstitutionName", "AccessionNumber", "ReferringPhysicianName", "StudyInstanceUID",
            "SeriesInstanceUID", "SOPInstanceUID")
    vals = {str(ds.get(k, "")).strip() for k in keys}
    return {v for v in vals if len(v) >= 4}


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom reading the truncated files
def test_no_patient_identifier_in_any_output(dicom_src, dicom_build):
    out, p = dicom_build
    ids = set()
    for f in dicom_src.rglob("*"):
        if f.is_file() and f.name not in ("README", "garbage.dcm") and f.suffix != ".txt":
            ids |= _identifiers(f)
    ids |= set(md.PHI.values()) | {part for v in md.PHI.values() for part in v.split("^") if len(part) >= 5}
    assert {"Doe^Jane^Quinn", "CompressedSamples^CT1", "1CT1", "20040119", "JFK IMAGING CENTER"} <= ids
    outputs = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.suffix == ".tar" for f in outputs) and (out / "skipped.jsonl") in outputs
    blobs = {str(f): f.read_bytes() for f in outputs}
    blobs["stdout+stderr"] = (p.stdout + p.stderr).encode()
    for ident in sorted(ids):
        hits = [name for name, b in blobs.items() if ident.encode() in b]
        assert not hits, f"{ident!r} found in {hits}"


def test_dicom_window_none_uses_the_full_range(dicom_src, tmp_path):
    src = tmp_path / "src"
    for rel in ("mr/MR_small.dcm", "cr/mono1.dcm", "cr/voilut.dcm"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(dicom_src / rel, src / rel)
    out = tmp_path / "out"
    run_cli("build", src, out, "--size", SIZE, "--workers", "1", "--progress", "false", "--dicom_window", "none",
            check=True)
    samples = read_samples(out)
    for rel in ("mr/MR_small.dcm", "cr/mono1.dcm", "cr/voilut.dcm"):
        meta, pixels = samples[rel]
        assert meta["dicom"]["window"] == "none"
        assert np.array_equal(pixels, reference(src / rel, window="none")), rel
        assert not np.array_equal(pixels, reference(src / rel)), rel
    assert json.loads((out / "manifest.json").read_text())["config"]["dicom_window"] == "none"
    assert run_cli("verify", out).returncode == 0


def test_bad_dicom_window_is_a_usage_error(dicom_src, tmp_path):
    p = run_cli("build", dicom_src, tmp_path / "out", "--dicom_window", "lung")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "--dicom_window" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "out").exists()


def test_dicom_in_kaggle_layout_and_csv_index(dicom_src, tmp_path):
    """DICOM files are images in every layout: Kaggle <class>/images/, and a CSV index."""
    src = tmp_path / "kaggle"
    for cls, rels in {"Normal": ["cr/CR_EXPORT_0001", "mr/MR_small.dcm"], "Effusion": ["ct/CT_small.dcm"]}.items():
        (src / cls / "images").mkdir(parents=True)
        (src / cls / "masks").mkdir()
        for rel in rels:
            shutil.copyfile(dicom_src / rel, src / cls / "images" / Path(rel).name)
            shutil.copyfile(dicom_src / rel, src / cls / "masks" / Path(rel).name)  # never training data
    run_cli("build", src, tmp_path / "k-out", "--size", SIZE, "--workers", "1", "--progress", "false", check=True)
    assert set(read_samples(tmp_path / "k-out")) == {"Normal/images/CR_EXPORT_0001", "Normal/images/MR_small.dcm",
                                                     "Effusion/images/CT_small.dcm"}
    index = tmp_path / "index.csv"
    index.write_text("path,label\ncr/CR_EXPORT_0001,a\nmr/MR_small.dcm,b\nmr/rtplan.dcm,b\n")
    run_cli("build", dicom_src, tmp_path / "i-out", "--index", index, "--size", SIZE, "--workers", "1",
            "--progress", "false", check=True)
    samples = read_samples(tmp_path / "i-out")
    assert set(samples) == {"cr/CR_EXPORT_0001", "mr/MR_small.dcm"}
    assert np.array_equal(samples["cr/CR_EXPORT_0001"][1], reference(dicom_src / "cr/CR_EXPORT_0001"))
    skipped = (tmp_path / "i-out" / "skipped.jsonl").read_text()
    assert "mr/rtplan.dcm" in skipped and "without pixel data" in skipped


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom: "Invalid value for VR CS"
def test_only_code_strings_are_recorded(tmp_path):
    """View Position and Modality are recorded only as DICOM code strings: free text never leaks."""
    from shardgen.imaging.dicom import decode_dicom

    ds = md.dicom_dataset(md.xray16(0, 16), "free", view_position="PA")
    ds.ViewPosition = "Doe^Jane"
    ds.Modality = "cr by Dr. House"
    path = md.write(str(tmp_path / "x.dcm"), ds)
    info = decode_dicom(Path(path).read_bytes()).info.to_json()
    assert "view_position" not in info and "modality" not in info
    assert "Doe" not in json.dumps(info) and "House" not in json.dumps(info)


def test_importing_shardgen_does_not_import_pydicom():
    import subprocess
    import sys

    code = ("import sys, shardgen.build.run, shardgen.imaging.image, shardgen.sources.folder, shardgen.imaging.dicom, "
            "shardgen.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('pydicom', 'pylibjpeg', 'openjpeg', 'libjpeg'))))")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert r.stdout.strip() == "[]"


def test_lookup_table_path_equals_per_pixel_path(dicom_src, monkeypatch):
    """Integer images go through an 8-bit table over their value range: the same pixels as
    running pydicom's LUT functions over every pixel (the table turned off)."""
    from shardgen.imaging import dicom

    files = [dicom_src / rel for rel in sorted(set(CONVERTS) | set(GENERATED))]
    for window in dicom.DICOM_WINDOWS:
        fast = [dicom.decode_dicom(f.read_bytes(), window).pixels for f in files]
        monkeypatch.setattr(dicom, "_LUT_MAX_SPAN", 0)
        slow = [dicom.decode_dicom(f.read_bytes(), window).pixels for f in files]
        monkeypatch.undo()
        for f, a, b in zip(files, fast, slow):
            assert np.array_equal(a, b), (f.name, window)
