"""Build straight from the download (issue 24): an archive or a folder of archives as SRC, read
in place, gives the same dataset as its unpacked copy (``shardgen diff`` exit 0)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from test_multilabel import COLUMNS, NO_FINDING, make_nih

FAST = ["--size", 32, "--shard_size", 40, "--progress", "false"]


def _zip_tree(folder: Path, dest: Path, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(dest, "w", compression) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return dest


def _tar_tree(folder: Path, dest: Path, mode: str, prefix: str = "") -> Path:
    with tarfile.open(dest, mode) as tf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                tf.add(p, prefix + p.relative_to(folder).as_posix())
    return dest


def _same(a: Path, b: Path) -> None:
    p = run_cli("diff", a, b)
    assert p.returncode == 0 and "same dataset" in p.stdout, (p.stdout, p.stderr)


def _build(src, out, *extra) -> dict:
    p = run_cli("build", src, out, *FAST, *extra)
    assert p.returncode == 0, p.stderr
    return json.loads((out / "manifest.json").read_text())


def _shards(m: dict) -> list:
    return [s for sp in m["splits"].values() for s in sp["shards"]]


@pytest.fixture(scope="module")
def unpacked(sample_src, tmp_path_factory):
    """The Kaggle download unpacked (masks, metadata .xlsx and README.md.txt inside) and its build."""
    out = tmp_path_factory.mktemp("kaggle") / "out"
    return sample_src, _build(sample_src, out), out


def test_kaggle_archive_zip_builds_as_its_unpacked_folder(unpacked, tmp_path):
    src, m_dir, out_dir = unpacked
    archive = _zip_tree(src, tmp_path / "archive.zip")
    assert any("/masks/" in n for n in zipfile.ZipFile(archive).namelist())
    out = tmp_path / "out"
    m = _build(archive, out)
    _same(out, out_dir)
    assert _shards(m) == _shards(m_dir)  # byte-identical shards: same keys, PNGs, labels
    keys = json.loads((out / "manifest.json").read_text())
    assert "mask" not in json.dumps(keys["splits"])


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "tgz"])
def test_tar_archives_build_as_the_unpacked_folder(unpacked, tmp_path, kind):
    src, _, out_dir = unpacked
    mode = {"tar": "w", "tar.gz": "w:gz", "tgz": "w:gz"}[kind]
    archive = _tar_tree(src, tmp_path / f"download.{kind}", mode, prefix="./")  # `tar czf x .` names
    _build(archive, tmp_path / "out")
    _same(tmp_path / "out", out_dir)


def test_members_of_an_unchanged_archive_are_trusted_on_resume_without_reading(unpacked, tmp_path):
    from shardgen.build.config import BuildConfig
    from shardgen.build.convert import ChunkTask
    from shardgen.build.store import LocalOut
    from shardgen.sources.archive_files import ArchiveFiles

    src, _, _ = unpacked
    archive = _zip_tree(src, tmp_path / "archive.zip")
    time.sleep(2.1)  # older than the stamp rule's window: an unchanged archive is trusted
    out = tmp_path / "out"
    (out / ".shardgen-work" / "chunks").mkdir(parents=True)
    names = sorted(n for n in zipfile.ZipFile(archive).namelist() if "/images/" in n)[:5]
    job = (0, [(n, f"{archive}/{n}") for n in names])
    task = ChunkTask(ArchiveFiles([str(archive)]), LocalOut(str(out)), BuildConfig(str(archive), str(out)).image_options)
    first = task(job)
    assert not first.reused and all(r.ok for r in first.records)
    again = task(job)
    assert again.reused and again.rehashed == 0
    os.utime(archive)  # touched: its stamp changed, so every member is read again (and still matches)
    touched = task(job)
    assert touched.reused and touched.rehashed == len(names)


# ---- NIH: a folder of tarballs with its CSV --------------------------------------------------------

def _nih_tarballs(unpacked_nih: Path, dest: Path, gz_csv: bool) -> Path:
    dest.mkdir()
    for part in sorted(d for d in unpacked_nih.iterdir() if d.is_dir()):
        _tar_tree(part, dest / f"{part.name}.tar.gz", "w:gz")  # each unpacks to images/
    data = (unpacked_nih / "Data_Entry_2017.csv").read_bytes()
    if gz_csv:
        (dest / "Data_Entry_2017.csv.gz").write_bytes(gzip.compress(data, mtime=0))
    else:
        (dest / "Data_Entry_2017.csv").write_bytes(data)
    return dest


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    kaggle = root / "kaggle"  # Kaggle's copy: images_001/images/...
    kaggle.mkdir()
    make_nih(kaggle, patients=16)
    out = root / "kaggle-out"
    _build(kaggle, out, "--index", kaggle / "Data_Entry_2017.csv", "--columns", COLUMNS, "--label_sep", "|",
           "--no_finding", NO_FINDING)
    return kaggle, out


@pytest.mark.parametrize("gz_csv", [False, True])
def test_nih_tarballs_are_the_same_dataset_as_kaggles_copy(nih, tmp_path, gz_csv):
    kaggle, kaggle_out = nih
    src = _nih_tarballs(kaggle, tmp_path / "nih", gz_csv)
    index = src / ("Data_Entry_2017.csv.gz" if gz_csv else "Data_Entry_2017.csv")
    _build(src, tmp_path / "out", "--index", index, "--columns", COLUMNS, "--label_sep", "|",
           "--no_finding", NO_FINDING)
    _same(tmp_path / "out", kaggle_out)


# ---- CheXpert: a zip with its CSV inside -----------------------------------------------------------

def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    px = np.random.default_rng(seed).integers(0, 256, (40, 32), dtype=np.uint8)
    Image.fromarray(px, "L").save(path)


def test_chexpert_zip_with_its_csv_inside(tmp_path):
    top = tmp_path / "unpacked"
    base = top / "CheXpert-v1.0-small"
    rows = []
    for k in range(24):
        rel = f"CheXpert-v1.0-small/train/patient{k:05d}/study1/view1_frontal.jpg"
        path = top / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        px = np.random.default_rng(k).integers(0, 256, (40, 32), dtype=np.uint8)
        Image.fromarray(px, "L").save(path, quality=90)
        rows.append([rel, "Frontal" if k % 3 else "Lateral"])
    with open(base / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Path", "Frontal/Lateral"])
        w.writerows(rows)
    archive = _zip_tree(top, tmp_path / "CheXpert-v1.0-small.zip")
    cols = "path=Path,label=Frontal/Lateral"
    _build(top, tmp_path / "a", "--index", base / "train.csv", "--columns", cols)
    _build(archive, tmp_path / "b", "--index", "CheXpert-v1.0-small/train.csv", "--columns", cols)
    _same(tmp_path / "a", tmp_path / "b")


# ---- PadChest: a folder of numbered zips -----------------------------------------------------------

def test_a_folder_of_numbered_zips_with_a_gzipped_index(tmp_path):
    unpacked, zips = tmp_path / "unpacked", tmp_path / "zips"
    zips.mkdir()
    rows = []
    for part in range(3):
        for k in range(6):
            name = f"img_{part}_{k}.png"
            _png(unpacked / str(part) / name, 10 * part + k)
            rows.append([name, str(part), "cardiomegaly" if k % 2 else "normal"])
        _zip_tree(unpacked / str(part), zips / f"{part}.zip", zipfile.ZIP_STORED)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["ImageID", "ImageDir", "Labels"])
    w.writerows(rows)
    for d in (unpacked, zips):
        (d / "index.csv.gz").write_bytes(gzip.compress(buf.getvalue().encode(), mtime=0))
    cols = "path=ImageID,label=Labels"
    _build(unpacked, tmp_path / "a", "--index", unpacked / "index.csv.gz", "--columns", cols)
    _build(zips, tmp_path / "b", "--index", zips / "index.csv.gz", "--columns", cols)
    _same(tmp_path / "a", tmp_path / "b")


# ---- hostile and broken archives -------------------------------------------------------------------

def test_hostile_member_names_are_skipped_with_their_reason(tmp_path):
    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(png, "PNG")
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        for c in ("a", "b"):
            for i in range(3):
                info = tarfile.TarInfo(f"{c}/{i}.png")
                data = png.getvalue() + bytes([i, ord(c)])  # distinct files, same pixels is fine
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        for name in ("../escape.png", "/abs.png", "a/../../up.png"):
            info = tarfile.TarInfo(name)
            info.size = len(png.getvalue())
            tf.addfile(info, io.BytesIO(png.getvalue()))
        link = tarfile.TarInfo("a/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    out = tmp_path / "out"
    p = run_cli("build", archive, out, *FAST, "--splits", "train=1")
    assert p.returncode == 0, p.stderr
    skipped = [json.loads(ln) for ln in (out / "skipped.jsonl").read_text().splitlines()]
    reasons = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in skipped}
    assert "unsafe member name" in reasons["escape.png"] and "unsafe member name" in reasons["abs.png"]
    assert "unsafe member name" in reasons["up.png"]
    assert "not a regular file" in reasons["link.png"]
    assert not (tmp_path / "escape.png").exists() and not Path("/abs.png").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["splits"]["train"]["samples"] == 6


@pytest.mark.parametrize("name", ["broken.zip", "broken.tar.gz"])
def test_a_broken_archive_is_one_line_naming_it(tmp_path, name):
    archive = tmp_path / name
    archive.write_bytes(b"PK\x03\x04 this is not a whole archive" if name.endswith("zip") else b"\x1f\x8b\x08garbage")
    out = tmp_path / "out"
    p = run_cli("build", archive, out, *FAST)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(archive) in lines[0] and "cannot be read" in lines[0], p.stderr
    assert "Traceback" not in p.stderr


def test_a_folder_with_folders_does_not_open_an_archive_beside_them(unpacked, tmp_path):
    src, m_dir, out_dir = unpacked
    both = tmp_path / "both"
    shutil.copytree(src, both)
    _zip_tree(src, both / "archive.zip")  # unzipped in place, the zip kept beside its contents
    p = run_cli("build", both, tmp_path / "out", *FAST)
    assert p.returncode == 0, p.stderr
    assert "note: SRC also holds archive.zip: not opened" in p.stderr, p.stderr
    _same(tmp_path / "out", out_dir)


def test_scheduler_local_workers_open_the_archive_themselves(unpacked, tmp_path):
    src, _, out_dir = unpacked
    archive = _zip_tree(src, tmp_path / "archive.zip")
    out = tmp_path / "out"
    p = run_cli("build", archive, out, *FAST, "--scheduler", "local:2", timeout=300)
    assert p.returncode == 0, p.stderr
    _same(out, out_dir)
    assert os.path.isfile(out / "manifest.json")


# ---- big JPEGs: libjpeg's DCT scaling (jpeg_draft) -------------------------------------------------

def _samples(out: Path) -> dict:
    """``{source: (json meta, pixels)}`` of every sample of a build."""
    got = {}
    for shard in sorted(out.glob("*/*.tar")):
        with tarfile.open(shard) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                png = members[name[:-len("json")] + "png"]
                got[meta["source"]] = (meta, np.asarray(Image.open(io.BytesIO(png)), np.int16))
    return got


def test_large_jpegs_decode_at_a_dct_scale_unless_jpeg_draft_false(tmp_path):
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1500, 0:1200].astype(np.float32)
    for k, c in enumerate(("a", "b")):
        (src / c).mkdir(parents=True)
        for i in range(3):
            img = 110 + 70 * np.sin(x / 170 + k + i) * np.cos(y / 300) + rng.normal(0, 3, x.shape)
            im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L")
            exif = Image.Exif()
            if i == 2:
                exif[0x0112] = 6  # shown rotated: 1500 x 1200
            im.save(src / c / f"{i}.jpg", quality=92, exif=exif.tobytes())
    common = ["--size", 64, "--splits", "train=1", "--progress", "false"]
    p = run_cli("build", src, tmp_path / "draft", *common)
    assert p.returncode == 0, p.stderr
    p = run_cli("build", src, tmp_path / "full", *common, "--jpeg_draft", "false")
    assert p.returncode == 0, p.stderr
    mdraft = json.loads((tmp_path / "draft" / "manifest.json").read_text())
    mfull = json.loads((tmp_path / "full" / "manifest.json").read_text())
    assert mdraft["config"]["jpeg_draft"] is True and mfull["config"]["jpeg_draft"] is False
    draft, full = _samples(tmp_path / "draft"), _samples(tmp_path / "full")
    assert draft.keys() == full.keys() and len(draft) == 6
    diffs = []
    for source, (meta, px) in draft.items():
        fmeta, fpx = full[source]
        want = (1500, 1200) if source.endswith("2.jpg") else (1200, 1500)
        assert (meta["width"], meta["height"]) == want == (fmeta["width"], fmeta["height"])  # the source's size
        diffs.append(np.abs(px - fpx).mean())
    assert 0 < max(diffs) and float(np.mean(diffs)) <= 1.0, diffs  # scaled, and within a grey level


# ---- an archive on object storage ------------------------------------------------------------------

from test_s3 import BUCKET, s3server  # noqa: E402,F401  (the session's SeaweedFS server)


@pytest.mark.s3
def test_a_zip_on_s3_builds_as_its_unpacked_folder(unpacked, s3server, tmp_path):  # noqa: F811
    src, m_dir, out_dir = unpacked
    archive = _zip_tree(src, tmp_path / "archive.zip")
    s3server.client().put(str(archive), f"{BUCKET}/download/archive.zip")
    out = tmp_path / "out"
    p = run_cli("build", f"s3://{BUCKET}/download/archive.zip", out, *FAST, env=s3server.env())
    assert p.returncode == 0, p.stderr
    _same(out, out_dir)
    assert _shards(json.loads((out / "manifest.json").read_text())) == _shards(m_dir)
