"""Distributed builds (issue 12): ``build --scheduler`` on a real Dask cluster on loopback.

A real ``dask scheduler`` and two ``dask worker`` processes (1 thread each, no dashboard)
are started with the ``dask`` CLI on free loopback ports; every build is compared, file by
file, with the multiprocessing build of the same inputs. Faults are real too: a worker
SIGKILLed mid-build, the client SIGKILLed mid-build, the scheduler killed, and a worker
running in a second virtual environment with another Pillow.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import xxhash

from conftest import ROOT, default_sigint, group_gone, run_cli, sample_tool
from s3server import _detach_and_die_with_parent, free_ports

distributed = pytest.importorskip("distributed")
sys.path.insert(0, str(ROOT / "tools"))
import stress_determinism as stress  # noqa: E402

OPTS = ["--size", "64", "--shard_size", "40", "--progress", "false"]
DASK = str(Path(sys.executable).parent / "dask")


def checksums(out: Path) -> dict[str, str]:
    """xxh64 of every file of a build, by relative path."""
    return {str(p.relative_to(out)): xxhash.xxh64_hexdigest(p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}


class DaskCluster:
    """``dask scheduler`` + ``dask worker`` processes on loopback, each in its own process group."""

    def __init__(self, workdir: Path, workers: int = 2, worker_python: str | None = None) -> None:
        self.workdir, self.procs = workdir, []
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        self.address = f"tcp://127.0.0.1:{self.port}"
        try:
            self._start([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
                        "scheduler")
            for i in range(workers):
                self.add_worker(worker_python, f"worker{i}")
            if workers:
                self.wait_for(workers)
        except BaseException:
            self.stop()  # never leave a scheduler or worker behind
            raise

    def _start(self, cmd: list[str], name: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        log = open(self.workdir / f"{name}.log", "wb")
        # Own process group, and SIGKILLed if the test process dies (as tests/s3server.py does).
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_detach_and_die_with_parent)
        log.close()
        self.procs.append(p)
        return p

    def add_worker(self, python: str | None = None, name: str = "worker") -> subprocess.Popen:
        cmd = ([python, "-m", "distributed.cli.dask_worker"] if python else [DASK, "worker"])
        return self._start(cmd + [self.address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                  "--host", "127.0.0.1", "--name", name], name)

    def client(self):
        return distributed.Client(self.address, timeout=30)

    def wait_for(self, n: int) -> None:
        with self.client() as c:
            c.wait_for_workers(n, timeout=60)

    def worker_pids(self) -> list[int]:
        with self.client() as c:
            return sorted(c.run(os.getpid).values())

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """4 classes x 60 images: about 2 s of conversion on two workers."""
    root = tmp_path_factory.mktemp("dask-src")
    return Path(sample_tool.make_dataset(str(root), {c: 60 for c in sample_tool.FULL_COUNTS}, seed=12,
                                         hostile=True, workers=2))


@pytest.fixture(scope="module")
def ref(src, tmp_path_factory) -> dict[str, str]:
    """The multiprocessing build's checksums."""
    out = tmp_path_factory.mktemp("dask-ref") / "out"
    run_cli("build", src, out, *OPTS, "--workers", "2", check=True)
    return checksums(out)


def test_scheduler_build_is_byte_identical_with_bars_and_dashboard_link(cluster, src, ref, tmp_path):
    out = tmp_path / "out"
    p = run_cli("build", src, out, "--size", "64", "--shard_size", "40", "--scheduler", cluster.address,
                env={"COLUMNS": "100"}, check=True)
    assert checksums(out) == ref
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("dask:")]
    # The test scheduler runs with --no-dashboard: the client says so instead of printing a dead link.
    assert len(lines) == 1 and f"2 worker(s) at {cluster.address}; dashboard: not served" in lines[0], p.stderr
    assert "convert:" in p.stderr and "shards:" in p.stderr  # the same bars as the local build
    assert "Traceback" not in p.stderr


def test_local_cluster_ctrl_c_then_resume_is_byte_identical(src, ref, tmp_path):
    """``local:2``: Ctrl-C (SIGINT to the whole process group, as a terminal sends it) mid-build gives
    exit 130 and one line (the workers ignore it, the client closes them); the re-run resumes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shardgen", "build", str(src), str(out), *OPTS, "--scheduler", "local:2"]

    def own_group_default_sigint():
        default_sigint()
        os.setsid()

    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), preexec_fn=own_group_default_sigint)
    chunks = out / ".shardgen-work" / "chunks"
    deadline = time.monotonic() + 120
    while p.poll() is None and time.monotonic() < deadline:
        if chunks.is_dir() and sum(f.suffix == ".json" for f in chunks.iterdir()) >= 1:
            break
        time.sleep(0.005)
    assert p.poll() is None, "the build ended before Ctrl-C"
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("dask: 2 worker(s) at local:2; dashboard: http://"), stderr
    assert lines[1].startswith("shardgen build: error: interrupted while converting images"), stderr
    assert group_gone(p.pid, 15), "processes of the local cluster are left behind"
    r = run_cli("build", src, out, *OPTS, "--scheduler", "local:2", check=True)
    assert "reused" in r.stdout
    assert checksums(out) == ref


def test_worker_sigkilled_mid_build_still_gives_the_same_bytes(cluster, src, ref, tmp_path):
    out = tmp_path / "out"
    victim = cluster.worker_pids()[0]
    cmd = [sys.executable, "-m", "shardgen", "build", str(src), str(out), *OPTS, "--scheduler", cluster.address]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    chunks = out / ".shardgen-work" / "chunks"
    deadline = time.monotonic() + 60
    while p.poll() is None and time.monotonic() < deadline:
        if chunks.is_dir() and sum(f.suffix == ".json" for f in chunks.iterdir()) >= 1:
            break
        time.sleep(0.005)
    assert p.poll() is None, "the build ended before the worker could be killed"
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 0, stdout + stderr
    assert checksums(out) == ref
    cluster.wait_for(2)  # the nanny restarted it
    assert victim not in cluster.worker_pids()


def test_client_killed_mid_build_resumes_byte_identical(cluster, src, ref, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shardgen", "build", str(src), str(out), *OPTS, "--scheduler", cluster.address]
    assert stress.kill_build(cmd, str(out), after_chunks=2)
    assert (out / ".shardgen-work").is_dir() and not (out / "manifest.json").exists()
    p = run_cli("build", src, out, *OPTS, "--scheduler", cluster.address, check=True)
    assert "reused" in p.stdout
    assert checksums(out) == ref


def test_scheduler_gone_is_one_line_not_a_hang(src, tmp_path):
    c = DaskCluster(tmp_path / "cluster", workers=1)
    out = tmp_path / "out"
    try:
        cmd = [sys.executable, "-m", "shardgen", "build", str(src), str(out), *OPTS, "--scheduler", c.address]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        chunks = out / ".shardgen-work" / "chunks"
        while p.poll() is None and not (chunks.is_dir() and any(chunks.iterdir())):
            time.sleep(0.005)
        os.killpg(c.procs[0].pid, signal.SIGKILL)
        t0 = time.monotonic()
        _, stderr = p.communicate(timeout=90)
        assert p.returncode == 1 and time.monotonic() - t0 < 60
        assert stderr.strip().splitlines()[-1].startswith("shardgen build: error: lost the Dask scheduler")
        assert "Traceback" not in stderr and not (out / "manifest.json").exists()
    finally:
        c.stop()


def test_bad_scheduler_values_are_refused_before_any_work(src, tmp_path):
    for value, why in [("localhost", "must be a Dask scheduler address"), ("local:0", "worker count"),
                       ("local:x", "worker count")]:
        p = run_cli("build", src, tmp_path / "out", "--scheduler", value)
        assert p.returncode == 2 and why in p.stderr and "Traceback" not in p.stderr, p.stderr
    p = run_cli("build", src, tmp_path / "out", "--scheduler", "local:2", "--workers", "2")
    assert p.returncode == 2 and "--workers is for the local build" in p.stderr
    assert not (tmp_path / "out").exists()


def _venv_with_other_pillow(where: Path, version: str) -> str:
    """A second virtual environment: this one's packages, but Pillow ``version`` (pip, from PyPI)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(where)],
                   check=True, capture_output=True)
    py = str(where / "bin" / "python")
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # After its own site-packages: this environment's (distributed, numpy, deflate, ...).
    Path(site, "zz-shardgen-test.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--target", site, f"pillow=={version}"], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"cannot install pillow=={version} into a second venv: {r.stderr.strip()[-300:]}")
    got = subprocess.run([py, "-c", "import PIL; print(PIL.__version__)"], capture_output=True, text=True).stdout
    assert got.strip() == version
    return py


def test_worker_with_another_pillow_is_refused_before_any_task(src, tmp_path):
    import PIL

    other = "12.0.0" if PIL.__version__ != "12.0.0" else "11.3.0"
    py = _venv_with_other_pillow(tmp_path / "venv2", other)
    c = DaskCluster(tmp_path / "cluster", workers=0)
    try:
        c.add_worker(name="same")
        c.add_worker(py, name="odd")
        c.wait_for(2)
        out = tmp_path / "out"
        p = run_cli("build", src, out, *OPTS, "--scheduler", c.address)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        line = p.stderr.strip().splitlines()[-1]
        assert line.startswith("shardgen build: error: Dask worker tcp://127.0.0.1:"), line
        assert f"has pillow {other}, the client has pillow {PIL.__version__}" in line
        assert not out.exists()  # refused before anything ran
    finally:
        c.stop()


# ----------------------------------------------------------------------------- object storage

from test_s3 import s3server  # noqa: E402,F401  (the session's SeaweedFS server)

BUCKET = "shardgen-dask"


@pytest.fixture(scope="module")
def s3(s3server):
    """The session's SeaweedFS server (``tests/test_s3.py``), with bucket ``shardgen-dask``."""
    s3server.make_bucket(BUCKET)
    return s3server


def s3fs_of(server):
    import s3fs

    return s3fs.S3FileSystem(key=server.access_key, secret=server.secret_key, skip_instance_cache=True,
                             client_kwargs={"endpoint_url": server.endpoint})


@pytest.fixture(scope="module")
def s3_src(src, s3, tmp_path_factory) -> tuple[str, Path, dict[str, str]]:
    """The hostile dataset without its dangling symlink (S3 has no symlinks), uploaded; with its local build."""
    import shutil

    local = tmp_path_factory.mktemp("s3src") / src.name
    shutil.copytree(src, local, symlinks=True)
    (local / "Normal" / "images" / "dangling.png").unlink()
    s3fs_of(s3).put(str(local), f"{BUCKET}/raw/{src.name}", recursive=True)
    out = tmp_path_factory.mktemp("s3ref") / "out"
    run_cli("build", local, out, *OPTS, "--workers", "2", check=True)
    return f"s3://{BUCKET}/raw/{src.name}", out, checksums(out)


def test_s3_src_and_out_on_the_cluster_match_the_local_build(cluster, s3, s3_src, tmp_path):
    url, local_out, want = s3_src
    dest = f"s3://{BUCKET}/built"
    # The workers have no AWS_* variables of their own: the client's travel with the tasks.
    p = run_cli("build", url, dest, *OPTS, "--scheduler", cluster.address, env=s3.env(), check=True)
    v = run_cli("verify", dest, "--progress", "false", env=s3.env())
    assert v.returncode == 0 and v.stdout.startswith("OK"), v.stdout + v.stderr
    fs = s3fs_of(s3)
    got = {k[len(f"{BUCKET}/built/"):]: xxhash.xxh64_hexdigest(fs.cat_file(k)) for k in fs.find(f"{BUCKET}/built")}
    assert got == want  # every object, manifest included, is the local build's file
    m = json.loads(fs.cat_file(f"{BUCKET}/built/manifest.json"))
    local_m = json.loads((local_out / "manifest.json").read_text())
    assert [s["xxh64"] for s in m["splits"]["train"]["shards"]] == \
        [s["xxh64"] for s in local_m["splits"]["train"]["shards"]]
    for text in (p.stdout, p.stderr, v.stdout, json.dumps(m)):
        assert s3.secret_key not in text and s3.access_key not in text


def test_s3_src_to_a_local_out_without_scheduler(s3, s3_src, tmp_path):
    url, _, want = s3_src
    out = tmp_path / "out"
    run_cli("build", url, out, *OPTS, "--workers", "2", env=s3.env(), check=True)
    assert checksums(out) == want


def test_s3_out_client_killed_resumes_byte_identical(cluster, s3, s3_src, tmp_path):
    url, _, want = s3_src
    dest = f"s3://{BUCKET}/resumed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), **s3.env())
    cmd = [sys.executable, "-m", "shardgen", "build", url, dest, *OPTS, "--scheduler", cluster.address]
    fs = s3fs_of(s3)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    while p.poll() is None and len([k for k in _find(fs, f"{BUCKET}/resumed/.shardgen-work/chunks")
                                    if k.endswith(".json")]) < 2:
        time.sleep(0.05)
    assert p.poll() is None, "the build ended before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not fs.exists(f"{BUCKET}/resumed/manifest.json")
    r = run_cli("build", url, dest, *OPTS, "--scheduler", cluster.address, env=s3.env(), check=True)
    assert "reused" in r.stdout
    fs.invalidate_cache()
    got = {k[len(f"{BUCKET}/resumed/"):]: xxhash.xxh64_hexdigest(fs.cat_file(k)) for k in fs.find(f"{BUCKET}/resumed")}
    assert got == want


def _find(fs, prefix: str) -> list[str]:
    fs.invalidate_cache()
    try:
        return fs.find(prefix)
    except FileNotFoundError:
        return []


def test_out_that_a_worker_cannot_see_is_refused(src, tmp_path):
    """A worker in its own mount namespace, with an empty tmpfs over the test's folder: it cannot see OUT."""
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a mount namespace here (unshare -m): {probe.stderr.decode().strip()}")
    c = DaskCluster(tmp_path / "cluster", workers=0)
    try:
        c.add_worker(name="sees")
        hidden = tmp_path / "private"
        hidden.mkdir()
        c._start(["unshare", "-m", "sh", "-c", f'mount -t tmpfs none "{hidden}" && exec "$0" "$@"', DASK, "worker",
                  c.address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1", "--name", "blind"], "blind")
        c.wait_for(2)
        p = run_cli("build", src, hidden / "out", *OPTS, "--scheduler", c.address)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        line = p.stderr.strip().splitlines()[-1]
        assert f"OUT {hidden / 'out'}" in line and "is not reachable from Dask worker" in line, line
    finally:
        c.stop()


def test_dicom_sources_in_s3_build_like_local_ones(s3, tmp_path):
    """DICOM in a bucket: ``.dcm`` files and an extensionless export (found by its preamble, read with one
    ranged request) convert to the same bytes as from a folder; a non-DICOM extensionless file is ignored."""
    pytest.importorskip("pydicom")
    import make_dicom as md

    src = tmp_path / "dcm"
    for c, seed in (("a", 0), ("b", 1)):
        for i in range(3):
            md.write(str(src / c / f"img{i}.dcm"), md.dicom_dataset(md.xray16(seed * 10 + i, 40), f"{c}{i}",
                                                                    bits_stored=12, window=(2000, 1000)))
        md.write(str(src / c / f"EXPORT_{c}"), md.dicom_dataset(md.xray16(seed * 10 + 7, 40), f"{c}x",
                                                                bits_stored=12))
        (src / c / "README").write_text("exported from the PACS\n" * 20)
    local = tmp_path / "local"
    run_cli("build", src, local, *OPTS, "--workers", "1", check=True)
    s3fs_of(s3).put(str(src), f"{BUCKET}/dicom/src", recursive=True)
    out = tmp_path / "out"
    run_cli("build", f"s3://{BUCKET}/dicom/src", out, *OPTS, "--workers", "1", env=s3.env(), check=True)
    assert checksums(out) == checksums(local)
    assert json.loads((out / "manifest.json").read_text())["report"]["images_used"] == 8
