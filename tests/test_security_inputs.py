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


# ----------------------------------------------------------------------------- transport errors

class DroppingServer:
    """A build folder served on 127.0.0.1 (a free port) from a thread, at ``/build``.

    HEAD is answered in full (status and Content-Length). GET is answered unless ``drop``
    says to drop it: ``"all"`` drops every GET, ``"tar"`` only the shards' (the connection is
    shut down without a byte of answer, as a broken proxy or a server that dies does); None
    serves everything.
    """

    def __init__(self, root: Path, drop: str | None = None):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _data(self) -> bytes | None:
                rel = self.path.split("?", 1)[0]
                if not rel.startswith("/build/"):
                    return None
                p = server.root / rel[len("/build/"):]
                return p.read_bytes() if p.is_file() else None

            def do_HEAD(self):
                data = self._data()
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()

            def do_GET(self):
                data = self._data()
                if server.drop == "all" or (server.drop == "tar" and self.path.endswith(".tar")):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.root, self.drop = Path(root), drop
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, scheme: str = "http") -> str:
        """The build's URL, with a user and :data:`PASSWORD` in it."""
        return f"{scheme}://reader:{PASSWORD}@127.0.0.1:{self.port}/build"

    def shown(self, scheme: str = "http") -> str:
        """:meth:`url` as every message must show it (userinfo redacted)."""
        return f"{scheme}://***@127.0.0.1:{self.port}/build"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve(small_build):
    servers: list[DroppingServer] = []

    def start(drop: str | None = None, root: Path = small_build) -> DroppingServer:
        servers.append(DroppingServer(root, drop))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def one_line(p: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """Exit ``code``, one line on stderr, no traceback, no password anywhere; returns the line."""
    out = p.stdout + p.stderr
    assert p.returncode == code, (p.returncode, out)
    assert "Traceback" not in out, out
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert PASSWORD not in out and "secretpw" not in out and "S3CR3T" not in out, out
    return lines[0]


COMMANDS = ("info", "verify", "export", "stylegan", "preview", "diff")


def _argv(command: str, url: str, tmp: Path, other: Path) -> list:
    return {"info": ["info", url, "--timeout", "10"],
            "verify": ["verify", url, "--workers", "1", "--progress", "false"],
            "export": ["export", url, "--dest", tmp / "export", "--progress", "false"],
            "stylegan": ["stylegan", url, "--dest", tmp / "sg.zip", "--progress", "false"],
            "preview": ["preview", url, "--out", tmp / "preview.png"],
            "diff": ["diff", url, other, "--decode", "true", "--progress", "false"]}[command]


def _run_all(commands, url: str, tmp: Path, other: Path) -> dict[str, subprocess.CompletedProcess]:
    """Each command against ``url``, three at a time (each writes under ``tmp/COMMAND/``)."""
    for c in commands:
        (tmp / c).mkdir(exist_ok=True)
    with ThreadPoolExecutor(3) as pool:
        runs = {c: pool.submit(run_cli, *_argv(c, url, tmp / c, other), timeout=120) for c in commands}
        return {c: f.result() for c, f in runs.items()}


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("case", ["drops every GET", "connection refused", "DNS failure", "TLS to plain HTTP"])
def test_every_command_that_reads_a_build_says_a_transport_error_in_one_line(case, serve, small_build, tmp_path):
    if case == "drops every GET":
        srv = serve("all")
        url, shown, why = srv.url(), srv.shown() + "/manifest.json", "the server closed the connection"
    elif case == "connection refused":
        port = _free_port()
        url, shown, why = (f"http://reader:{PASSWORD}@127.0.0.1:{port}/build",
                           f"http://***@127.0.0.1:{port}/build/manifest.json", "connection refused")
    elif case == "DNS failure":
        url, shown, why = (f"http://reader:{PASSWORD}@shardgen-test.invalid/build",
                           "http://***@shardgen-test.invalid/build/manifest.json",
                           "cannot resolve the host name shardgen-test.invalid")
    else:
        srv = serve()
        url, shown, why = srv.url("https"), srv.shown("https") + "/manifest.json", "TLS handshake failed"
    for command, p in _run_all(COMMANDS, url, tmp_path, small_build).items():
        line = one_line(p, shown, why)
        assert line.startswith(f"shardgen {command}: error: "), line
    assert not (tmp_path / "export" / "export").exists() and not (tmp_path / "stylegan" / "sg.zip").exists()


def test_a_server_that_drops_the_shards_gets_is_one_line_naming_the_shard(serve, small_build, tmp_path):
    srv = serve("tar")
    runs = _run_all([c for c in COMMANDS if c != "info"], srv.url(), tmp_path, small_build)
    for command, p in runs.items():
        line = one_line(p, srv.shown() + "/", ".tar: cannot read: the server closed the connection")
        assert line.startswith(f"shardgen {command}: error: "), line
        assert line.count("://") == 1, line  # the URL once, not wrapped in a second message
    assert not (tmp_path / "export" / "export").exists() and not (tmp_path / "stylegan" / "sg.zip").exists()
    p = run_cli("info", srv.url())  # the manifest alone is served: info works, redacted
    assert p.returncode == 0 and f"build:   {srv.shown()} " in p.stdout and PASSWORD not in p.stdout + p.stderr


# ----------------------------------------------------------------------------- access denied (S3)

@pytest.mark.s3
def test_a_wrong_s3_secret_or_key_says_access_denied_not_no_such_build(small_build, s3server, s3env):  # noqa: F811
    dest = f"s3://{BUCKET}/security-denied"
    run_cli("upload", small_build, dest, "--progress", "false", env=s3env, check=True)
    assert run_cli("verify", dest, "--progress", "false", env=s3env).returncode == 0  # the right credentials read it
    for wrong in (dict(s3env, AWS_SECRET_ACCESS_KEY="not-the-S3CR3T-value"),
                  dict(s3env, AWS_ACCESS_KEY_ID="no-such-access-key")):
        for args in (["info", dest], ["verify", dest, "--progress", "false"]):
            p = run_cli(*args, env=wrong)
            line = one_line(p, f"{dest}/manifest.json: access denied", "AWS_SECRET_ACCESS_KEY", code=2)
            assert "no such build folder" not in line and s3server.secret_key not in p.stdout + p.stderr


# ----------------------------------------------------------------------------- secrets and escapes in output

def test_info_and_verify_print_a_url_with_a_password_redacted(serve, small_build, tmp_path):
    srv = serve()
    p = run_cli("info", srv.url())
    assert p.returncode == 0 and f"build:   {srv.shown()} (" in p.stdout, p.stdout + p.stderr
    assert PASSWORD not in p.stdout + p.stderr
    p = run_cli("info", srv.url(), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["root"] == srv.shown() and PASSWORD not in p.stdout + p.stderr
    # A damaged copy: verify's FAILED line and its problems name the build by its redacted URL.
    bad = tmp_path / "bad"
    shutil.copytree(small_build, bad)
    shard = sorted((bad / "train").glob("*.tar"))[0]
    data = bytearray(shard.read_bytes())
    data[700] ^= 0xFF
    shard.write_bytes(bytes(data))
    srv = serve(root=bad)
    p = run_cli("verify", srv.url(), "--workers", "1", "--progress", "false")
    assert p.returncode == 1 and PASSWORD not in p.stdout + p.stderr, p.stdout + p.stderr
    failed = [ln for ln in p.stdout.splitlines() if ln.startswith("FAILED")]
    assert failed and srv.shown() in failed[0], p.stdout


@pytest.mark.parametrize("argv", [
    ["info", "http://u:secretpw@127.0.0.1:1/x", "--bogus", "1"],
    ["info", "http://u:secretpw@127.0.0.1:1/x", "http://u:secretpw@127.0.0.1:1/y"],
    ["http://u:secretpw@127.0.0.1:1/x"],
    ["info", "--nojson=http://u:secretpw@h/x", "http://h/x"],
    ["verify", "http://h/x", "--workers", "password=S3CR3T"],
    ["upload", "OUT", "s3://b/x", "--storage_options", '{"secret": "S3CR3T"'],
    ["build", "OUT", "s3://b/x", "--storage_options", '{"secret": "S3CR3T"'],
], ids=["unknown flag", "extra argument", "unknown command", "negated flag", "bad integer",
        "upload bad json", "build bad json"])
def test_argument_errors_never_echo_a_secret(argv, small_build):
    p = run_cli(*[small_build if a == "OUT" else a for a in argv])
    one_line(p, "error:", code=2)


def _tampered(small_build: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "tampered"
    shutil.copytree(small_build, out)
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


RAW = ("\x1b", "\x07", "\x9b", "\u202e")  # ESC, BEL, CSI (C1), right-to-left override


def test_info_escapes_what_a_manifest_prints_and_its_refusals(small_build, tmp_path):
    def edit(m):
        m["report"]["images_found"] = "\x1b]0;pwned\x07 120"
        m["report"]["label_conflicts"] = "\x9b31m3"
        m["config"]["layout"] = "kaggle\x1b[2J\u202e"
        m["shardgen_version"] = "9.9\x1b[5m"

    build = _tampered(small_build, tmp_path, edit)
    p = run_cli("info", build)
    assert p.returncode == 0, p.stderr
    assert not any(c in p.stdout + p.stderr for c in RAW), repr(p.stdout)
    assert "found \\x1b]0;pwned\\x07 120" in p.stdout and "label conflicts \\x9b31m3" in p.stdout, p.stdout
    assert "9.9\\x1b[5m" in p.stdout and "\\u202e" in p.stdout
    p = run_cli("info", build, "--json")
    assert p.returncode == 0 and not any(c in p.stdout for c in RAW), repr(p.stdout)
    data = json.loads(p.stdout)  # still JSON, and the values are what the manifest holds
    assert data["config"]["layout"] == "kaggle\x1b[2J\u202e" and data["report"]["label_conflicts"] == "\x9b31m3"

    def evil_class(m):
        m["classes"][0] = "COVID\x1b[31m\x9b"

    p = run_cli("info", _tampered(small_build, tmp_path / "c", evil_class))
    line = one_line(p, "class", code=1)
    assert not any(c in line for c in RAW) and "\\x1b[31m" in line, repr(line)
