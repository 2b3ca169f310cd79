"""Issue 22, hostile inputs on the read side: DICOM codestreams that lie about their size,
storage that fails in transport or refuses the credentials, and secrets and terminal escapes
in what the commands print.

- A DICOM file's compressed frame is checked against ``--max_pixels`` and against Rows,
  Columns and Samples per Pixel from its own codestream header (JPEG 2000 SIZ, JP2 ihdr,
  JPEG SOFn, JPEG-LS SOF55) before any decoder runs: a 6 KB JPEG 2000 file whose SIZ says
  20000 x 20000 is skipped with the reason and the build's peak memory stays small.
- ``info``, ``verify``, ``export``, ``stylegan``, ``preview`` and ``diff`` against a server
  that answers HEAD and drops GET (every GET, or only the shards'), a refused connection, a
  host under ``.invalid`` and an ``https://`` URL to a plain-HTTP server: one line naming
  the redacted URL, exit 1, no traceback. The misbehaving server is :class:`DroppingServer`,
  a thread on 127.0.0.1.
- ``info`` and ``verify`` of an ``s3://`` build with a wrong secret (SeaweedFS with one
  identity, ``s3server.py``) say access denied.
- No ``user:password`` of a URL in any line of ``info``, ``verify`` (its FAILED line) or an
  argument error; no raw ESC from a build's manifest in ``info``'s output.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames

import make_dicom as md
from conftest import ROOT, run_cli
from test_s3 import BUCKET, s3env, s3server  # noqa: F401  (the session's SeaweedFS server)

PASSWORD = "pa55-SECRET-word"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


# ----------------------------------------------------------------------------- DICOM codestreams

def _frame(ds) -> bytes:
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def _write_with_frame(ds, frame: bytes, path: Path) -> Path:
    """``ds`` with its one encapsulated frame replaced by ``frame``, written to ``path``."""
    ds.PixelData = encapsulate([frame])
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    path.write_bytes(buf.getvalue())
    return path


def _siz(frame: bytes, width: int, height: int, at: int = 0) -> bytes:
    """A J2K codestream (at ``frame[at]``) whose SIZ says ``width`` x ``height``, one tile."""
    b = bytearray(frame)
    assert b[at:at + 4] == b"\xff\x4f\xff\x51"
    struct.pack_into(">IIIIII", b, at + 8, width, height, 0, 0, width, height)
    return bytes(b)


def _sof(frame: bytes, width: int, height: int) -> bytes:
    """A JPEG / JPEG-LS codestream whose first SOFn (or SOF55) says ``width`` x ``height``."""
    b, at = bytearray(frame), 2
    while b[at + 1] not in (0xC0, 0xC1, 0xC2, 0xC3, 0xF7):
        at += 2 + struct.unpack(">H", b[at + 2:at + 4])[0]
    struct.pack_into(">HH", b, at + 5, height, width)
    return bytes(b)


def _jp2(frame: bytes, ihdr: tuple[int, int] | None = None, siz: tuple[int, int] | None = None) -> bytes:
    """A JP2 file whose ihdr box and/or codestream SIZ say other sizes (width, height)."""
    b = bytearray(frame)
    if ihdr:
        i = b.index(b"ihdr")
        struct.pack_into(">II", b, i + 4, ihdr[1], ihdr[0])
    if siz:
        b = bytearray(_siz(bytes(b), *siz, at=b.index(b"\xff\x4f\xff\x51", b.index(b"jp2c"))))
    return bytes(b)


def _test_file(name: str):
    return pydicom.dcmread(TEST_FILES / name)


def _skips(out: Path) -> dict[str, str]:
    return {r["path"]: r["reason"] for r in map(json.loads, (out / "skipped.jsonl").read_text().splitlines())}


#: The address space a test build may use (bytes): a decoder that believes a lying codestream
#: fails with MemoryError under it instead of taking the machine's memory (the code before
#: this check allocated 23 GB for the files below).
AS_CAP = 4 << 30
#: Runs ARGV, then prints the peak RSS (KiB) of its largest waited-for descendant (the build's workers).
_PEAK = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
         "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)")


def _cap_memory() -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (AS_CAP, AS_CAP))


def _build(src: Path, out: Path, *extra: str) -> float:
    """``shardgen build`` (1 worker) under :data:`AS_CAP`; returns the peak RSS of its processes in MB."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.Popen([sys.executable, "-c", _PEAK, sys.executable, "-m", "shardgen", "build", src, out, "--size",
                          "32", "--workers", "1", "--progress", "false", *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_cap_memory, start_new_session=True)
    try:
        stdout, stderr = p.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # a decoder that loops on a lying header: end the whole build
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise AssertionError("the build did not finish within 300 s") from None
    assert p.returncode == 0, stdout + stderr
    return int(stdout.split()[-1]) / 1024


def test_a_j2k_codestream_bomb_is_skipped_before_any_decoder_allocates(tmp_path):
    src = tmp_path / "src"
    for c in ("a", "b"):
        for i in range(3):
            md.write(str(src / c / f"{c}{i}.dcm"), md.dicom_dataset(md.xray16(i, 64), f"{c}{i}", bits_stored=12),
                     j2k=True)
    ds = md.dicom_dataset(md.xray16(9, 64), "bomb", bits_stored=12)
    md.write(str(tmp_path / "plain.dcm"), ds, j2k=True)  # compressed in place: 64x64 J2K
    bomb = _write_with_frame(ds, _siz(_frame(ds), 20000, 20000), src / "a" / "bomb.dcm")
    assert bomb.stat().st_size < 8000  # a few KB that decode to 20000 x 20000
    out = tmp_path / "out"
    peak_mb = _build(src, out)
    reason = _skips(out)["a/bomb.dcm"]
    assert reason == "decompression bomb: the JPEG 2000 codestream says 20000x20000 = 400000000 pixels > " \
                     "limit 89478485", reason
    assert peak_mb < 400, f"peak RSS {peak_mb:.0f} MB: a decoder allocated the 20000x20000 image"
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(s["samples"] for s in manifest["splits"].values()) == 6  # the honest files all converted


#: name in SRC -> (pydicom test file, new frame from its frame, skip reason (None: converts)).
MISMATCHES = {
    "bad/j2k_bigger.dcm": ("MR_small_jp2klossless.dcm", lambda f: _siz(f, 100, 64),
                           "DICOM pixel data does not match its header: the JPEG 2000 codestream says 100x64, "
                           "Columns x Rows is 64x64"),
    "bad/jp2_ihdr.dcm": ("GDCMJ2K_TextGBR.dcm", lambda f: _jp2(f, ihdr=(20000, 20000)),
                         "unreadable DICOM codestream header: JP2: its ihdr box says 20000x20000 with 3 "
                         "components, its codestream 400x400 with 3"),
    "bad/jp2_both.dcm": ("GDCMJ2K_TextGBR.dcm", lambda f: _jp2(f, ihdr=(20000, 20000), siz=(20000, 20000)),
                         "decompression bomb: the JP2 codestream says 20000x20000 = 400000000 pixels > limit"),
    "bad/jpeg_extended.dcm": ("JPGExtended.dcm", lambda f: _sof(f, 256, 1000),
                              "DICOM pixel data does not match its header: the JPEG codestream says 256x1000, "
                              "Columns x Rows is 256x1024"),
    "bad/jpeg_baseline.dcm": ("SC_rgb_jpeg_dcmtk.dcm", lambda f: _sof(f, 120, 100),
                              "DICOM pixel data does not match its header: the JPEG codestream says 120x100"),
    "bad/jpeg_dnl.dcm": ("JPGExtended.dcm", lambda f: _sof(f, 256, 0),
                         "unreadable DICOM codestream header: JPEG: its frame header declares 256x0"),
    "bad/jpeg_ls.dcm": ("MR_small_jpeg_ls_lossless.dcm", lambda f: _sof(f, 64, 80),
                        "DICOM pixel data does not match its header: the JPEG-LS codestream says 64x80"),
    "bad/not_a_codestream.dcm": ("MR_small_jp2klossless.dcm", lambda f: b"\x00" * 16 + f[16:],
                                 "unreadable DICOM codestream header: not a JPEG, JPEG-LS or JPEG 2000 codestream"),
    "good/j2k.dcm": ("MR_small_jp2klossless.dcm", None, None),
    "good/jp2.dcm": ("GDCMJ2K_TextGBR.dcm", None, None),
    "good/jpeg_extended.dcm": ("JPGExtended.dcm", None, None),
    "good/jpeg_baseline.dcm": ("SC_rgb_jpeg_dcmtk.dcm", None, None),
    "good/jpeg_ls.dcm": ("MR_small_jpeg_ls_lossless.dcm", None, None),
}


def test_codestreams_that_disagree_with_the_header_are_skipped_and_honest_ones_convert(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for rel, (name, patch, _) in MISMATCHES.items():
        ds = _test_file(name)
        _write_with_frame(ds, patch(_frame(ds)) if patch else _frame(ds), src / rel)
    ds = _test_file("MR_small_jp2klossless.dcm")
    ds.SamplesPerPixel = 3  # a gray J2K codestream (1 component) in a header that says colour
    _write_with_frame(ds, _frame(ds), src / "bad" / "components.dcm")
    _build(src, out)
    skips = _skips(out)
    for rel, (_, _, reason) in MISMATCHES.items():
        if reason is None:
            assert rel not in skips, (rel, skips.get(rel))
        else:
            assert skips.get(rel, "").startswith(reason), (rel, skips.get(rel))
    assert skips["bad/components.dcm"] == ("DICOM pixel data does not match its header: the JPEG 2000 codestream "
                                          "has 1 components, Samples per Pixel is 3")


def test_max_pixels_applies_to_the_size_the_codestream_declares(tmp_path):
    """Header 64x64 (4,096 pixels) under --max_pixels 5000; each codestream says 100x100."""
    src, out = tmp_path / "src", tmp_path / "out"
    cases = {"x/j2k.dcm": ("MR_small_jp2klossless.dcm", lambda f: _siz(f, 100, 100), "JPEG 2000"),
             "x/jpeg_ls.dcm": ("MR_small_jpeg_ls_lossless.dcm", lambda f: _sof(f, 100, 100), "JPEG-LS"),
             "y/jpeg.dcm": ("SC_rgb_small_odd_jpeg.dcm", lambda f: _sof(f, 100, 100), "JPEG")}
    for rel, (name, patch, _) in cases.items():
        ds = _test_file(name)
        _write_with_frame(ds, patch(_frame(ds)), src / rel)
    ds = _test_file("MR_small_jp2klossless.dcm")
    _write_with_frame(ds, _frame(ds), src / "y" / "honest.dcm")
    _build(src, out, "--max_pixels", "5000")
    skips = _skips(out)
    for rel, (_, _, kind) in cases.items():
        assert skips.get(rel) == f"decompression bomb: the {kind} codestream says 100x100 = 10000 pixels > " \
                                 "limit 5000", (rel, skips.get(rel))
    assert "y/honest.dcm" not in skips
