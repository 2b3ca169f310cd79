"""One writer per OUT (issue 22): ``build`` holds OUT for its whole run -- an ``flock`` on a local
folder, a lease object on ``s3://`` (SeaweedFS, the real server) -- and a second build refuses
in one line naming the holder, having changed nothing; a killed build's lock or lease is taken
over. Real builds, really held (``inject_build.py`` stops them at a chosen point) and really
killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT, group_gone, run_cli, sample_tool
from test_s3 import BUCKET, s3server  # noqa: F401  (the session's SeaweedFS server)

OPTS = ["--size", "32", "--shard_size", "20", "--progress", "false"]


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """60 images (4 classes x 15)."""
    root = tmp_path_factory.mktemp("lock-src")
    return Path(sample_tool.make_dataset(str(root), {c: 15 for c in sample_tool.FULL_COUNTS}, seed=7, workers=2))


@pytest.fixture(scope="module")
def seed5(src, tmp_path_factory) -> dict[str, bytes]:
    """The files of an undisturbed ``--seed 5`` build of ``src``."""
    out = tmp_path_factory.mktemp("lock-ref") / "out"
    run_cli("build", src, out, *OPTS, "--seed", "5", "--workers", "2", check=True)
    return tree(out)


class Held:
    """A real build stopped at ``point`` (``tests/inject_build.py``), in its own process group."""

    def __init__(self, point: str, src, out, tmp: Path, *extra: str, env: dict | None = None):
        self.marker = tmp / f"held-{point.replace(':', '-')}-{time.monotonic_ns()}"
        full = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "inject_build.py"), point, str(self.marker), "--", "build",
             str(src), str(out), *OPTS, "--workers", "1", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full, start_new_session=True)
        deadline = time.monotonic() + 120
        while not self.marker.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"the held build ended ({self.proc.returncode}): {self.proc.stderr.read()}")
            assert time.monotonic() < deadline, "the held build never reached its point"
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the whole build (its workers too), and wait until every process of it is gone."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        assert group_gone(self.proc.pid)
        self.proc.stdout.close()
        self.proc.stderr.close()


def refused(p: subprocess.CompletedProcess, pid: int) -> str:
    """Exit 1, one line naming the holder's pid and its command; returns the line."""
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    line = lines[0]
    assert "is in use by another build; nothing was changed" in line, line
    assert f"(pid {pid}" in line and "running: inject_build.py" in line, line
    return line


# ----------------------------------------------------------------------------- a local OUT

@pytest.mark.parametrize("point, second", [
    ("chunk:1", ["--seed", "5"]),                   # another config: refused as busy, not as "different config"
    ("chunk:1", ["--seed", "5", "--overwrite"]),    # --overwrite would have deleted the running build's files
    ("chunk:1", []),                                # the same config: would have resumed beside it
    ("after-manifest", ["--seed", "5", "--overwrite"]),  # the last phase is covered too
])
def test_a_second_build_refuses_and_changes_nothing_then_takes_over_a_killed_one(src, seed5, tmp_path, point,
                                                                                  second):
    out = tmp_path / "out"
    held = Held(point, src, out, tmp_path)
    try:
        before = tree(out)
        p = run_cli("build", src, out, *OPTS, "--workers", "2", *second)
        refused(p, held.proc.pid)
        assert tree(out) == before  # not a byte changed, the lock file included
    finally:
        held.kill()
    # SIGKILL leaves the holder record behind; it does not block (the kernel released the flock)
    record = json.loads((out / ".shardgen-work" / "build.lock").read_text())
    assert record["pid"] == held.proc.pid
    p = run_cli("build", src, out, *OPTS, "--workers", "2", "--seed", "5", "--overwrite")
    assert p.returncode == 0, p.stdout + p.stderr
    assert tree(out) == seed5  # a clean build: no scrap of the killed one, no lock file left
    v = run_cli("verify", out)
    assert v.returncode == 0 and v.stdout.startswith("OK"), v.stdout + v.stderr


def test_a_killed_builds_surviving_worker_keeps_out_locked(src, tmp_path):
    """Only the build's main process is killed; its worker (held inside a chunk) still has OUT open
    for writing, so OUT stays locked, and the refusal says why."""
    out = tmp_path / "out"
    held = Held("chunk:1", src, out, tmp_path)
    try:
        os.kill(held.proc.pid, signal.SIGKILL)
        held.proc.wait(30)
        line = refused(run_cli("build", src, out, *OPTS), held.proc.pid)
        assert "which has exited: a process it started, such as one of its workers, still holds OUT" in line
    finally:
        held.kill()
    p = run_cli("build", src, out, *OPTS, "--workers", "2")
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_dask_build_refuses_before_its_cluster_starts(src, tmp_path):
    out = tmp_path / "out"
    held = Held("chunk:1", src, out, tmp_path)
    try:
        before = tree(out)
        t0 = time.monotonic()
        p = run_cli("build", src, out, "--size", "32", "--shard_size", "20", "--progress", "false",
                    "--scheduler", "local:1")
        refused(p, held.proc.pid)
        assert time.monotonic() - t0 < 30
        assert tree(out) == before
    finally:
        held.kill()


def test_a_refused_build_leaves_no_trace_in_a_finished_build(src, tmp_path):
    """A build that takes the lock on a finished build and then refuses (another config, no
    --overwrite) removes the lock and the scratch folder it made: upload still takes the build."""
    out = tmp_path / "out"
    run_cli("build", src, out, *OPTS, check=True)
    before = tree(out)
    p = run_cli("build", src, out, *OPTS, "--seed", "9")
    assert p.returncode == 2 and "different config" in p.stderr, p.stderr
    assert tree(out) == before and not (out / ".shardgen-work").exists()
    up = run_cli("upload", out, tmp_path / "dest", "--progress", "false")
    assert up.returncode == 0, up.stdout + up.stderr


# ----------------------------------------------------------------------------- an s3:// OUT

def _env(server, **extra) -> dict[str, str]:
    return dict(server.env(), **extra)


def _objects(server, prefix: str) -> dict[str, str]:
    fs = server.filesystem()
    root = f"{BUCKET}/{prefix}"
    return {k[len(root) + 1:]: v.get("ETag") for k, v in fs.find(root, detail=True).items()
            if v.get("type") != "directory"}


@pytest.mark.s3
def test_s3_second_build_refuses_while_the_lease_is_renewed_and_takes_over_a_killed_one(s3server, src,  # noqa: F811
                                                                                       tmp_path):
    out = f"s3://{BUCKET}/lock/held"
    secret_opts = json.dumps({"key": s3server.access_key, "secret": s3server.secret_key})
    env = {k: v for k, v in _env(s3server).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    held = Held("after-manifest", src, out, tmp_path, "--storage_options", secret_opts,
                env=dict(env, SHARDGEN_LEASE_TTL="3"))
    second = ["build", src, out, *OPTS, "--seed", "5", "--overwrite", "--storage_options", secret_opts]
    try:
        time.sleep(4.5)  # longer than the TTL: only renewals keep the lease alive
        before = _objects(s3server, "lock/held")
        assert ".shardgen-work/lease.json" in before
        p = run_cli(*second, env=env)
        line = refused(p, held.proc.pid)
        assert "its lease .shardgen-work/lease.json expires 3 s after its last renewal" in line, line
        assert s3server.secret_key not in p.stderr + p.stdout
        lease = s3server.filesystem().cat_file(f"{BUCKET}/lock/held/.shardgen-work/lease.json")
        assert s3server.secret_key.encode() not in lease and b"--storage_options ***" in lease
        after = _objects(s3server, "lock/held")
        lease_name = ".shardgen-work/lease.json"
        assert {k: v for k, v in after.items() if k != lease_name} == \
            {k: v for k, v in before.items() if k != lease_name}  # nothing changed
        assert json.loads(lease)["pid"] == held.proc.pid  # the lease is still the first build's (renewed)
    finally:
        held.kill()
    # killed on this machine: its pid is gone, so the next build takes the lease over at once
    # (one from another machine waits for expiry: the test below)
    p = run_cli(*second, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "conditional writes" not in p.stderr  # SeaweedFS honours If-None-Match / If-Match
    v = run_cli("verify", out, env=_env(s3server))
    assert v.returncode == 0 and v.stdout.startswith("OK"), v.stdout + v.stderr
    assert not [k for k in _objects(s3server, "lock/held") if ".shardgen-work" in k]


@pytest.mark.s3
def test_s3_a_build_that_lost_its_lease_never_writes_its_manifest(s3server, src, tmp_path):  # noqa: F811
    """A build frozen past its TTL (SIGSTOP) is taken over; thawed, it finds its lease gone and stops
    (exit 1) without publishing, while the build that took over holds OUT."""
    out = f"s3://{BUCKET}/lock/lost"
    env = _env(s3server, SHARDGEN_LEASE_TTL="2", PYTHONPATH=str(ROOT))
    a = subprocess.Popen([sys.executable, "-m", "shardgen", "build", str(src), out, *OPTS, "--workers", "1"],
                         env=dict(os.environ, **env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    fs = s3server.filesystem()
    try:
        while not fs.exists(f"{BUCKET}/lock/lost/.shardgen-work/lease.json"):
            assert a.poll() is None, a.stderr.read()
            time.sleep(0.02)
            fs.invalidate_cache()
        os.killpg(a.pid, signal.SIGSTOP)
        time.sleep(3.5)
        b = Held("after-manifest", src, out, tmp_path, env={"SHARDGEN_LEASE_TTL": "2", **s3server.env()})
        try:
            os.killpg(a.pid, signal.SIGCONT)
            _, err = a.communicate(timeout=120)
            assert a.returncode == 1, err
            assert "another build took its lease over" in err and "stopped before writing manifest.json" in err, err
            assert "manifest.json" not in _objects(s3server, "lock/lost")
        finally:
            b.kill()
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
            a.wait()


def _lease(server, prefix: str):
    from shardgen.build.lease import Lease
    from shardgen.storage.location import location

    return Lease(location(f"s3://{BUCKET}/{prefix}", {"key": server.access_key, "secret": server.secret_key},
                          server.endpoint))


def _race(leases) -> tuple[list, list]:
    """Every lease's ``acquire()`` at once; returns (winners, refusals)."""
    from shardgen.build.lock import OutBusy

    wins, busy, go = [], [], threading.Barrier(len(leases))

    def one(lease):
        go.wait()
        try:
            wins.append(lease.acquire())
        except OutBusy as e:
            busy.append(str(e))

    threads = [threading.Thread(target=one, args=(le,)) for le in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return wins, busy


@pytest.mark.s3
def test_s3_of_many_builds_starting_at_once_exactly_one_gets_the_lease(s3server):  # noqa: F811
    wins, busy = _race([_lease(s3server, "lock/race") for _ in range(8)])
    try:
        assert len(wins) == 1 and len(busy) == 7, busy
        assert wins[0].guarded  # the store refused a second If-None-Match write
    finally:
        for w in wins:
            w.release()
    assert not _objects(s3server, "lock/race")  # released: the lease is deleted


@pytest.mark.s3
def test_s3_of_many_builds_taking_over_an_expired_lease_exactly_one_wins(s3server):  # noqa: F811
    """The lease of a build on another machine (its pid means nothing here) is live until it expires."""
    fs = s3server.filesystem()
    dead = {"user": "u", "host": "gone", "pid": 1, "started": "2020-01-01 00:00:00", "command": "shardgen build",
            "token": "dead", "ttl_s": 2}
    fs.pipe_file(f"{BUCKET}/lock/expired/.shardgen-work/lease.json", json.dumps(dead).encode())
    wins, busy = _race([_lease(s3server, "lock/expired") for _ in range(3)])
    assert not wins and len(busy) == 3 and all("host gone" in b for b in busy), busy  # still live
    time.sleep(3)
    wins, busy = _race([_lease(s3server, "lock/expired") for _ in range(8)])
    try:
        assert len(wins) == 1 and len(busy) == 7, busy
    finally:
        for w in wins:
            w.release()
