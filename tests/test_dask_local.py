"""``build --scheduler local:N`` (issue 12's throughput work): several build jobs per Dask task,
and a local cluster set up for the build without touching the caller's process.

The local cluster's workers are real spawned processes; every build is compared, file by file,
with the multiprocessing build of the same inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from conftest import run_cli, sample_tool

distributed = pytest.importorskip("distributed")

from shardgen.cluster import connect, parse_scheduler  # noqa: E402
from shardgen.cluster_tasks import batches  # noqa: E402


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
