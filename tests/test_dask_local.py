"""``build --scheduler local:N`` (issue 12's throughput work): several build jobs per Dask task,
and a local cluster set up for the build without touching the caller's process.

The local cluster's workers are real spawned processes; every build is compared, file by file,
with the multiprocessing build of the same inputs. The cluster starts while the client scans
SRC (:mod:`shardgen.engines.dask_start`): whatever ends the build first leaves no process behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash

from conftest import ROOT, default_sigint, group_gone, run_cli, sample_tool

distributed = pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")  # a dependency of distributed

from shardgen.engines.dask import connect, parse_scheduler  # noqa: E402
from shardgen.engines.dask_start import start  # noqa: E402
from shardgen.engines.dask_tasks import batches  # noqa: E402


def checksums(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): xxhash.xxh64_hexdigest(p.read_bytes())
            for p in sorted(out.rglob("*")) if p.is_file()}


def test_batches_keep_every_job_in_order_and_end_with_single_jobs():
    for n, slots, most in [(0, 2, 4), (1, 2, 4), (5, 2, 4), (331, 2, 4), (331, 8, 4), (90, 1, 16), (24, 2, 4)]:
        jobs = list(range(n))
        got = list(batches(iter(jobs), n, slots, most))  # jobs are taken one at a time
        assert [j for b in got for j in b] == jobs
        assert all(1 <= len(b) <= most for b in got)
        assert [len(b) for b in got] == sorted((len(b) for b in got), reverse=True)  # large first
        assert all(len(b) == 1 for b in got[-min(n, 4 * slots):])  # the tail evens out the workers
    assert len(list(batches(range(331), 331, 2, 4))) < 331 / 3  # 331 chunks of 21,165 images: 96 tasks


def test_local_cluster_leaves_the_callers_environment_as_it_was(monkeypatch):
    """The Nanny writes its pre-spawn variables into this process's environment: put back. The
    workers get neither MALLOC_TRIM_THRESHOLD_ (glibc would return every freed image buffer to
    the kernel) nor the statistical profiler."""
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    before = dict(os.environ)
    pool = connect(parse_scheduler("local:1"), 10**8)
    try:
        assert dict(os.environ) == before
        env = pool.client.run(os.environ.get, "MALLOC_TRIM_THRESHOLD_")
        assert list(env.values()) == [None]

        def profiling() -> bool:
            import dask

            return dask.config.get("distributed.worker.profile.enabled")

        assert list(pool.client.run(profiling).values()) == [False]
        assert pool.dashboard.startswith("http://")
    finally:
        pool.shutdown()
    assert dict(os.environ) == before


def test_local_build_with_several_shards_per_task_is_byte_identical(tmp_path):
    """48 shards on 2 workers: the first Dask tasks each write several shards."""
    src = Path(sample_tool.make_dataset(str(tmp_path / "src"), {c: 30 for c in sample_tool.FULL_COUNTS}, seed=5,
                                        workers=2))
    opts = ["--size", "32", "--shard_size", "2", "--progress", "false"]
    run_cli("build", src, tmp_path / "mp", *opts, "--workers", "2", check=True)
    run_cli("build", src, tmp_path / "dask", *opts, "--scheduler", "local:2", check=True)
    want = checksums(tmp_path / "mp")
    assert sum(p.endswith(".tar") for p in want) >= 48
    assert checksums(tmp_path / "dask") == want


def test_connections_keep_no_message_log_and_dask_config_is_left_alone():
    """Dask logs the last 1,000 messages of every connection: for a build, its jobs (hundreds
    of bytes per image on the client). Our connections keep none; the user's Dask config is
    the same afterwards."""
    import dask

    before = dask.config.get("distributed.admin.low-level-log-length")
    pool = connect(parse_scheduler("local:1"), 10**8)
    try:
        assert dask.config.get("distributed.admin.low-level-log-length") == before
        assert pool.client.scheduler_comm.recent_message_log.maxlen == 0
        sched = pool.local.scheduler  # a local cluster's scheduler runs in this process
        assert sched.stream_comms and all(c.recent_message_log.maxlen == 0 for c in sched.stream_comms.values())
    finally:
        pool.shutdown()


# ------------------------------------------------------------------ the cluster starts during the scan


def _cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    """``python -m shardgen ARGS`` in its own process group (the local cluster's workers join it)."""
    def own_group():
        default_sigint()
        os.setsid()

    return subprocess.Popen([sys.executable, "-m", "shardgen", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=own_group,
                            env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})))


def _ignores_sigint(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(ignored & (1 << (signal.SIGINT - 1)))


def test_src_without_images_is_one_line_and_leaves_no_worker(tmp_path):
    """The scan's usage error comes while the cluster is starting: one line, exit 2, nothing left."""
    (tmp_path / "src" / "Normal").mkdir(parents=True)
    p = _cli("build", tmp_path / "src", tmp_path / "out", "--scheduler", "local:2")
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 2, stderr
    assert stderr.strip().splitlines() == [f"shardgen build: error: SRC {tmp_path / 'src'}: no images found "
                                           "(imagefolder layout)"], stderr
    assert group_gone(p.pid), "processes of the local cluster are left behind"
    assert not (tmp_path / "out").exists()


def test_cluster_that_cannot_start_is_one_line_and_leaves_nothing(tmp_path):
    src = sample_tool.make_dataset(str(tmp_path / "src"), {c: 2 for c in sample_tool.FULL_COUNTS}, seed=3)
    p = _cli("build", src, tmp_path / "out", "--scheduler", "local:2",
             env={"DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "no-such-method"})
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("shardgen build: error: cannot start the Dask cluster local:2 ("), stderr
    assert "no-such-method" in lines[0]
    assert group_gone(p.pid) and not (tmp_path / "out").exists()


def test_ctrl_c_while_the_cluster_starts_is_one_line_and_leaves_nothing(tmp_path):
    """The workers are spawned with SIGINT ignored (the client ignores it only until then):
    Ctrl-C to the whole group, as a terminal sends it, while they boot gives exit 130, the
    client's one line and no worker traceback."""
    src = sample_tool.make_dataset(str(tmp_path / "src"), {c: 2 for c in sample_tool.FULL_COUNTS}, seed=4)
    p = _cli("build", src, tmp_path / "out", "--scheduler", "local:2", "--progress", "false")
    deadline, workers = time.monotonic() + 60, []
    while p.poll() is None and time.monotonic() < deadline:
        try:
            workers = [c for c in psutil.Process(p.pid).children() if "spawn_main" in " ".join(c.cmdline())]
        except psutil.Error:  # a child gone meanwhile
            continue
        if len(workers) == 2 and not _ignores_sigint(p.pid):
            break
        time.sleep(0.005)
    assert p.poll() is None and len(workers) == 2, "the build ended before its workers were spawned"
    assert all(_ignores_sigint(w.pid) for w in workers)
    os.killpg(p.pid, signal.SIGINT)
    _, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["shardgen build: interrupted"], stderr
    assert group_gone(p.pid), "processes of the local cluster are left behind"


def test_closed_before_the_cluster_is_up_leaves_this_process_as_it_was(monkeypatch):
    """An error before the build waits for the cluster: close() waits for the start and closes
    it; no child process, environment variable, log level or Ctrl-C handler is left changed.
    A cluster waited for works, with the same guarantees."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    env, sigint = dict(os.environ), signal.getsignal(signal.SIGINT)
    levels = {n: logging.getLogger(n).level for n in ("distributed", "distributed.nanny", "tornado")}
    me = psutil.Process()

    def children() -> set[int]:
        """This process's children, less multiprocessing's resource tracker (started once, kept)."""
        found = set()
        for c in me.children(recursive=True):
            try:
                if c.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(c.cmdline()):
                    found.add(c.pid)
            except psutil.Error:
                pass
        return found

    kids = children()

    def unchanged() -> None:
        assert dict(os.environ) == env and signal.getsignal(signal.SIGINT) is sigint
        assert {n: logging.getLogger(n).level for n in levels} == levels
        deadline = time.monotonic() + 15
        while children() - kids:
            assert time.monotonic() < deadline, "processes of the local cluster are left behind"
            time.sleep(0.1)

    starting = start(parse_scheduler("local:2"), 10**8)
    assert signal.getsignal(signal.SIGINT) is sigint  # put back once the workers are spawned
    starting.close()
    unchanged()
    starting.close()  # again: nothing to do

    lines: list[str] = []
    starting = start(parse_scheduler("local:1", log=lines.append), 10**8)
    pool = starting.wait()
    assert dict(os.environ) == env
    assert list(pool.client.run(os.getpid)) and lines and lines[0].startswith("dask: 1 worker(s) at local:1")
    starting.close()
    unchanged()
