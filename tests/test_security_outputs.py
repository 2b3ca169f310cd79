"""The exports write only inside DEST and only from verified bytes (issue 22, items 2 and 7).

``export``, ``stylegan`` (zip and folder) and ``preview`` are run through the CLI on hostile
builds written by hand (tars made with :mod:`tarfile`, manifests whose sizes and checksums
match them, so only the names or headers are hostile), on tampered copies of a genuine
build, locally and served by ``tests/http_build_server.py``; on full (tmpfs) and read-only
destinations; and killed with SIGKILL mid-write. Each checks the exit code, the one line,
and the files on disk around DEST before and after.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import xxhash
from PIL import Image

from conftest import ROOT, run_cli
from http_build_server import BuildServer

COMMANDS = ("export", "stylegan-zip", "stylegan-folder", "preview")


def cli_args(command: str, source, dest: Path) -> list:
    """The command line of ``command`` writing to ``dest`` (a path without suffix)."""
    if command == "export":
        return ["export", source, "--dest", dest, "--progress", "false"]
    if command == "stylegan-zip":
        return ["stylegan", source, "--dest", f"{dest}.zip", "--progress", "false"]
    if command == "stylegan-folder":
        return ["stylegan", source, "--dest", f"{dest}/", "--progress", "false"]
    return ["preview", source, "--out", f"{dest}.png"]


def snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` (symlinks not followed): its mode and, for files, its bytes."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, p.read_bytes() if p.is_file() and not p.is_symlink() else None)
    return out


def one_line_error(p: subprocess.CompletedProcess, code: int = 1) -> str:
    out = p.stdout + p.stderr
    assert p.returncode == code, out
    assert "Traceback" not in out and len(p.stderr.strip().splitlines()) == 1 and not p.stdout, out
    return p.stderr


def png(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (size, size), 128).save(buf, "PNG")
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.mode = len(data), 0, 0o644
            tf.addfile(ti, io.BytesIO(data))


def publish_shard(b: Path, shard: Path, samples: int, ext: str | None = None) -> None:
    """Make ``shard`` the only shard of train in build ``b``'s manifest, its size and xxh64 matching."""
    m = json.loads((b / "manifest.json").read_text())
    data = shard.read_bytes()
    rel = str(shard.relative_to(b))
    for other in m["splits"]["train"]["shards"]:
        if other["path"] != rel:
            (b / other["path"]).unlink()
    m["splits"]["train"] = {"samples": samples, "class_counts": {c: samples * (i == 0) for i, c in
                                                                 enumerate(m["classes"])},
                            "shards": [{"path": rel, "samples": samples, "bytes": len(data),
                                        "xxh64": xxhash.xxh64_hexdigest(data)}]}
    if ext:
        m["image"]["ext"] = ext
    (b / "manifest.json").write_text(json.dumps(m, indent=1))


@pytest.fixture
def site(tmp_path) -> Path:
    """``site/`` holds the build(s) and ``site/work/`` the outputs: nothing outside DEST may change."""
    (tmp_path / "site" / "work").mkdir(parents=True)
    (tmp_path / "site" / "venv" / "lib" / "python3.11" / "site-packages").mkdir(parents=True)
    return tmp_path / "site"


def hostile_names_build(small_build, site: Path, ext: str) -> Path:
    """One train sample whose members are ``../../../../venv/.../site-packages/x.<ext>`` and ``.cls``."""
    b = Path(shutil.copytree(small_build, site / "b"))
    prefix = "../../../../venv/lib/python3.11/site-packages/x"
    shard = b / "train" / "train-000000.tar"
    write_tar(shard, [(f"{prefix}.{ext}", b"import os  # ran at python start-up\n" if ext == "pth" else png()),
                      (f"{prefix}.cls", b"0")])
    publish_shard(b, shard, 1, ext)
    return b


@pytest.fixture
def served(site):
    srv = BuildServer(site, site.parent / "state")
    yield srv
    srv.stop()


@pytest.mark.parametrize("ext", ["pth", "png"])
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["local", "http"])
def test_a_member_named_out_of_dest_writes_nothing_outside_it(small_build, site, served, command, ext, where):
    b = hostile_names_build(small_build, site, ext)
    source = b if where == "local" else f"{served.url}/b"
    before = snapshot(site)
    p = run_cli(*cli_args(command, source, site / "work" / "dest"))
    assert snapshot(site) == before, p.stderr  # no .pth in the venv, no DEST, no temporary
    err = one_line_error(p)
    assert ("image.ext" if ext == "pth" else "site-packages") in err, err


def test_an_output_name_never_leaves_the_folder(tmp_path):
    from shardgen.commands.archive import FolderOut, ZipOut
    from shardgen.errors import ShardgenError

    (tmp_path / "victim").mkdir()
    before = snapshot(tmp_path)
    for name in ("../x.png", "a/../../x.png", "/abs.png", "a//b.png", "a\\..\\b.png", "a\x00b.png", "./x", ""):
        for cls, dest in ((FolderOut, tmp_path / "d"), (ZipOut, tmp_path / "d.zip")):
            with pytest.raises(ShardgenError, match="not a plain relative path"), cls(str(dest)) as out:
                out.write(name, b"x")
    assert snapshot(tmp_path) == before
    # A folder inside the temporary one that resolves elsewhere (a planted symlink) is refused.
    with pytest.raises(ShardgenError, match="resolves outside"), FolderOut(str(tmp_path / "d")) as out:
        os.symlink(tmp_path / "victim", Path(out.tmp) / "train")
        out.write("train/x.png", b"x")
    assert list((tmp_path / "victim").iterdir()) == [] and snapshot(tmp_path) == before


def test_a_symlink_planted_at_the_temporary_name_is_never_followed(tmp_path, monkeypatch):
    from shardgen.format import atomic

    tokens = iter(["000000000000"])
    monkeypatch.setattr(atomic, "_token", lambda: next(tokens, None) or os.urandom(6).hex())
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    planted = tmp_path / f".tmp-{os.getpid()}.{host_tag()}.000000000000-out.bin"
    os.symlink(victim, planted)
    atomic.atomic_write_bytes(str(tmp_path / "out.bin"), b"new")
    assert victim.read_bytes() == b"precious" and os.readlink(planted) == str(victim)
    assert (tmp_path / "out.bin").read_bytes() == b"new"
    # Names are unpredictable: 48 random bits after the pid and host.
    names = {atomic.temp_name("x") for _ in range(1000)}
    assert len(names) == 1000


def host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def temps(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(".tmp-"))


@pytest.mark.parametrize("command", ["export", "stylegan-zip", "stylegan-folder"])
def test_a_run_killed_mid_write_is_swept_by_the_next(small_build, tmp_path, command):
    pub = tmp_path / "pub"
    shutil.copytree(small_build, pub / "b")
    srv = BuildServer(pub, tmp_path / "state")
    try:
        srv.set_faults(freeze=["b/train/train-000001.tar"])  # the second shard never arrives
        work = tmp_path / "work"
        work.mkdir()
        args = [sys.executable, "-m", "shardgen", *map(str, cli_args(command, f"{srv.url}/b", work / "dest"))]
        proc = subprocess.Popen(args, env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (temps(work) and any(e["path"].endswith("train-000000.tar") for e in srv.log())):
            assert time.monotonic() < deadline and proc.poll() is None, "the export neither started nor hung"
            time.sleep(0.05)
        time.sleep(0.5)  # the first shard written, the second one's request hangs
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        srv.stop()
    left = temps(work)
    assert len(left) == 1, left
    p = run_cli(*cli_args(command, pub / "b", work / "dest"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert temps(work) == [], temps(work)
    assert left[0].startswith(f".tmp-{proc.pid}.{host_tag()}."), left  # what told the sweep it was stale


def test_the_sweep_removes_only_our_own_stale_temporaries(small_build, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    gone, tag = dead_pid(), host_tag()
    stale_file, stale_dir = f".tmp-{gone}.{tag}.0123456789ab-preview.png", f".tmp-{gone}.{tag}.0123456789ac-dest"
    (work / stale_file).write_bytes(b"partial")
    (work / stale_dir / "00000").mkdir(parents=True)
    (work / stale_dir / "00000" / "img00000000.png").write_bytes(b"partial")
    sleeper = subprocess.Popen(["sleep", "60"])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    kept = {f".tmp-{sleeper.pid}.{tag}.0123456789ad-live.zip": "live writer",
            f".tmp-{gone}.deadbeef.0123456789ae-x.zip": "another host",
            ".tmp-k2j3h4g5-old-style.zip": "not our name form",
            f".tmp-{gone}.{tag}.0123456789af-nobody.zip": "another user's",
            f".tmp-{gone}.{tag}.0123456789b0-locked.zip": "locked (a writer in another pid namespace)"}
    for name in kept:
        (work / name).write_bytes(b"x")
    # The previous DEST moved aside by a replacing export killed before the new one was renamed
    # in: kept while DEST is missing (it is the only copy), removed once DEST exists again.
    only_copy, replaced = f".tmp-{gone}.{tag}.0123456789b2-old-gone", f".tmp-{gone}.{tag}.0123456789b3-old-there"
    (work / only_copy).mkdir()
    (work / replaced).mkdir()
    (work / "there").mkdir()
    kept[only_copy] = "the only copy of DEST"
    os.chown(work / f".tmp-{gone}.{tag}.0123456789af-nobody.zip", 65534, 65534)
    os.symlink(victim, work / f".tmp-{gone}.{tag}.0123456789b1-link")
    fd = os.open(work / f".tmp-{gone}.{tag}.0123456789b0-locked.zip", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        p = run_cli("preview", small_build, "--out", work / "preview.png")
    finally:
        os.close(fd)
        sleeper.kill()
        sleeper.wait()
    assert p.returncode == 0, p.stderr
    assert temps(work) == sorted([*kept, f".tmp-{gone}.{tag}.0123456789b1-link"])
    assert (victim / "keep.txt").read_text() == "mine"


@pytest.fixture
def tmpfs(tmp_path):
    """A 5 MiB tmpfs at ``tmp_path/mnt`` (root only; skipped where mount is not allowed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount -t tmpfs")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass


@pytest.mark.parametrize("command", COMMANDS)
def test_a_full_disk_is_one_line_and_leaves_nothing(small_build, tmpfs, command):
    fill(tmpfs)
    before = snapshot(tmpfs)
    err = one_line_error(run_cli(*cli_args(command, small_build, tmpfs / "dest")))
    assert str(tmpfs / "dest") in err and "No space left on device" in err, err
    assert snapshot(tmpfs) == before


@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_destination_is_one_line(small_build, tmpfs, command):
    if subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount read-only")
    err = one_line_error(run_cli(*cli_args(command, small_build, tmpfs / "dest")))
    assert str(tmpfs / "dest") in err and "Read-only file system" in err, err
    assert os.listdir(tmpfs) == []


def as_nobody(top: Path, cli: list) -> subprocess.CompletedProcess:
    args = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable, "-m", "shardgen",
            *map(str, cli)]
    p = subprocess.run(args, capture_output=True, text=True, cwd=top, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(top)})
    if "ModuleNotFoundError" in p.stderr or "Permission denied: '/" in p.stderr[:200]:
        pytest.skip(f"nobody cannot run this python: {p.stderr[-200:]}")
    return p


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unwritable_folder_is_one_line_for_another_user(small_build, command):
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as nobody")
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="sg-nobody-"))
    try:
        os.chmod(top, 0o755)
        b = Path(shutil.copytree(small_build, top / "b"))
        for p in [b, *b.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        (top / "ro").mkdir(mode=0o755)  # root's: nobody may not write in it
        err = one_line_error(as_nobody(top, cli_args(command, b, top / "ro" / "dest")))
        assert str(top / "ro" / "dest") in err and "Permission denied" in err, err
        assert os.listdir(top / "ro") == []
        if command in ("export", "stylegan-folder"):  # a DEST of root's that nobody may not even list
            (top / "rw" / "dest").mkdir(parents=True, mode=0o700)
            os.chmod(top / "rw", 0o777)
            err = one_line_error(as_nobody(top, cli_args(command, b, top / "rw" / "dest")))
            assert str(top / "rw" / "dest") in err and "Permission denied" in err, err
            assert os.listdir(top / "rw") == ["dest"]
    finally:
        shutil.rmtree(top, ignore_errors=True)


def tamper_label(b: Path) -> str:
    """Relabel the first sample of the first train shard in place (same size): the xxh64 no longer matches."""
    rel = json.loads((b / "manifest.json").read_text())["splits"]["train"]["shards"][0]["path"]
    with tarfile.open(b / rel) as tf:
        m = next(mm for mm in tf.getmembers() if mm.name.endswith(".cls"))
        old = tf.extractfile(m).read()
    data = bytearray((b / rel).read_bytes())
    data[m.offset_data:m.offset_data + len(old)] = b"1" if old != b"1" else b"2"
    (b / rel).write_bytes(bytes(data))
    return rel


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("where", ["local", "http"])
def test_a_shard_changed_in_place_is_refused_and_nothing_is_committed(small_build, site, served, command, where):
    b = Path(shutil.copytree(small_build, site / "b"))
    rel = tamper_label(b)
    before = snapshot(site)
    err = one_line_error(run_cli(*cli_args(command, b if where == "local" else f"{served.url}/b",
                                           site / "work" / "dest")))
    assert rel in err and "does not match manifest.json" in err, err
    assert snapshot(site) == before


def test_a_longer_shard_and_diff_decode_are_refused(small_build, builds_pair):
    a, b = builds_pair
    rel = json.loads((b / "manifest.json").read_text())["splits"]["test"]["shards"][0]["path"]
    with open(b / rel, "ab") as f:
        f.write(b"\0" * 512)
    err = one_line_error(run_cli("export", b, "--dest", b.parent / "dest", "--progress", "false"))
    assert rel in err and "longer than" in err, err
    tamper_label(b)
    err = one_line_error(run_cli("diff", a, b, "--decode", "true", "--progress", "false"), code=2)
    assert "does not match manifest.json" in err or "longer than" in err, err


@pytest.fixture
def builds_pair(small_build, tmp_path):
    return small_build, Path(shutil.copytree(small_build, tmp_path / "b"))


def test_a_member_header_claiming_100_gb_is_one_line(small_build, site):
    b = Path(shutil.copytree(small_build, site / "b"))
    shard = b / "train" / "train-000000.tar"
    ti = tarfile.TarInfo("k0.png")
    ti.size = 100 * 10**9
    shard.write_bytes(ti.tobuf(format=tarfile.GNU_FORMAT) + png()[:1024].ljust(1024, b"\0"))
    publish_shard(b, shard, 1)
    before = snapshot(site)
    for command in COMMANDS:
        err = one_line_error(run_cli(*cli_args(command, b, site / "work" / "dest")))
        assert "train-000000.tar" in err and "100,000,000,000 bytes" in err, err
    assert snapshot(site) == before


def test_stylegan_refuses_200000_entries_naming_one_shard_without_writing(small_build, site):
    b = Path(shutil.copytree(small_build, site / "b"))
    m = json.loads((b / "manifest.json").read_text())
    one = m["splits"]["train"]["shards"][0]
    m["splits"]["train"] = {"samples": 200_000 * one["samples"],
                            "class_counts": {c: 200_000 * one["samples"] * (i == 0)
                                             for i, c in enumerate(m["classes"])},
                            "shards": [dict(one) for _ in range(200_000)]}
    (b / "manifest.json").write_text(json.dumps(m))
    before = snapshot(site)
    t0 = time.monotonic()
    p = run_cli("stylegan", b, "--dest", site / "work" / "train.zip", "--progress", "false", timeout=120)
    assert time.monotonic() - t0 < 60
    err = one_line_error(p)
    assert "listed twice" in err, err
    assert snapshot(site) == before


@pytest.mark.parametrize("fault", ["cut_once", "refuse"])
def test_a_transport_error_while_reading_is_one_line(small_build, site, served, fault):
    """A GET answered 503 every time is one line naming the shard; one cut off once is either
    retried into the genuine output or one line too, never a traceback or a partial output."""
    shutil.copytree(small_build, site / "b")
    genuine = site.parent / "genuine.zip"
    run_cli("stylegan", site / "b", "--dest", genuine, "--progress", "false", check=True)
    served.set_faults(**{fault: ["b/train/train-000001.tar"]})
    before = snapshot(site)
    p = run_cli(*cli_args("stylegan-zip", f"{served.url}/b", site / "work" / "dest"))
    if fault == "cut_once" and p.returncode == 0:
        assert (site / "work" / "dest.zip").read_bytes() == genuine.read_bytes()
        return
    err = one_line_error(p)
    assert "train-000001.tar" in err, err
    assert snapshot(site) == before
    if fault == "refuse":  # every time: export too
        p = run_cli(*cli_args("export", f"{served.url}/b", site / "work" / "dest"))
        assert "train-000001.tar" in one_line_error(p) and snapshot(site) == before


def test_stylegan_notes_missing_last_classes_in_one_line(small_build, site):
    """A split whose last classes have no images: the note is printed (it was a TypeError traceback)."""
    b = Path(shutil.copytree(small_build, site / "b"))
    shard = b / "train" / "train-000000.tar"
    with tarfile.open(shard) as tf:
        members = [(m.name, b"0" if m.name.endswith(".cls") else tf.extractfile(m).read()) for m in tf.getmembers()]
    write_tar(shard, members)
    publish_shard(b, shard, len(members) // 3)
    p = run_cli("stylegan", b, "--dest", site / "work" / "train.zip", "--progress", "false")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == "note: StyleGAN2-ADA will use 1 label dimensions (highest label + 1), not 4: " \
                               "the last class(es) have no images here", p.stderr
