"""The Dask and s3:// columns of ``tools/bench_build.py`` (issue 12): same data, same run.

Each column takes ``bench_build.run_build`` (the one way the benchmark runs a build).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["dask_column", "s3_column", "shard_sums"]


def shard_sums(manifest: dict) -> list[str]:
    return [sh["xxh64"] for s in manifest["splits"].values() for sh in s["shards"]]


def dask_column(run_build, src: str, root: str, size: int, workers: int, rounds: int, t_local: float, n: int,
                manifest: dict) -> dict:
    """``--scheduler local:N`` against the multiprocessing build (best of ``rounds`` each, interleaved)."""
    out, best_dask, best_mp = os.path.join(root, "out-dask"), float("inf"), t_local
    best_inner = cpu_dask = cpu_mp = float("inf")
    for r in range(rounds):
        shutil.rmtree(out, ignore_errors=True)
        print(f"shardgen build --scheduler local:{workers} (round {r + 1}/{rounds}) ...", file=sys.stderr)
        t, _, _, stdout = run_build(src, out, size, None, extra=("--scheduler", f"local:{workers}"))
        best_dask, cpu_dask = min(best_dask, t), min(cpu_dask, run_build.cpu_seconds)
        # The build's own timing ("N images in X s") starts at the scan of SRC; since the local
        # cluster starts during the scan (shardgen.engines.dask_start), it includes the part of the
        # start that the scan does not cover, but not the import of shardgen and distributed.
        m = re.search(r"images in ([0-9.]+) s", stdout)
        best_inner = min(best_inner, float(m.group(1)) if m else t)
        mp_out = os.path.join(root, "out-mp")
        shutil.rmtree(mp_out, ignore_errors=True)
        best_mp = min(best_mp, run_build(src, mp_out, size, workers)[0])
        cpu_mp = min(cpu_mp, run_build.cpu_seconds)
        shutil.rmtree(mp_out, ignore_errors=True)
    with open(os.path.join(out, "manifest.json")) as f:
        same = shard_sums(json.load(f)) == shard_sums(manifest)
    shutil.rmtree(out, ignore_errors=True)
    return {"dask_workers": workers, "dask_seconds": round(best_dask, 2), "dask_images_per_s": round(n / best_dask, 1),
            "dask_seconds_after_cluster_start": round(best_inner, 2),
            "mp_seconds_same_run": round(best_mp, 2), "dask_vs_mp": round(best_mp / best_dask, 3),
            "dask_vs_mp_after_cluster_start": round(best_mp / best_inner, 3),
            # CPU seconds of all the build's processes (fewest of the rounds): what other load on a
            # shared machine changes least; the wall-clock ratio needs the machine to itself.
            "dask_cpu_seconds": round(cpu_dask, 2), "mp_cpu_seconds_same_run": round(cpu_mp, 2),
            "dask_vs_mp_cpu": round(cpu_mp / cpu_dask, 3),
            "dask_identical": same}


def s3_column(run_build, src: str, root: str, size: int, workers: int | None, rounds: int, t_local: float, n: int,
              manifest: dict) -> dict:
    """SRC and OUT on a local SeaweedFS, and SRC on it with OUT a local folder, against the
    local-disk build (best of ``rounds`` each)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import fsspec
    from s3server import SeaweedS3

    # capacity for SRC, OUT and their leftovers between rounds (removed objects are not
    # reclaimed at once): the tests' 20 volumes of 256 MB fill up at the full 21,165 images
    server = SeaweedS3(os.path.join(root, "weed"), volumes=120)
    server.start()
    try:
        server.make_bucket("bench")
        env = server.env()
        fs = fsspec.filesystem("s3", key=server.access_key, secret=server.secret_key,
                               client_kwargs={"endpoint_url": server.endpoint})
        print("uploading SRC to SeaweedFS ...", file=sys.stderr)
        fs.put(src, "bench/raw/" + os.path.basename(src), recursive=True)
        url, best, cpu, weed_cpu = "s3://bench/raw/" + os.path.basename(src), float("inf"), 0.0, 0.0
        local_out, best_lo, cpu_lo, weed_lo = os.path.join(root, "out-s3src"), float("inf"), 0.0, 0.0
        extra = ("--workers", str(workers)) if workers else ()
        for r in range(rounds):
            print(f"shardgen build s3:// -> s3:// (round {r + 1}/{rounds}) ...", file=sys.stderr)
            fs.rm("bench/out", recursive=True) if fs.exists("bench/out") else None
            w0 = process_cpu(server.proc.pid)
            t = run_build(url, "s3://bench/out", size, workers, env=env, extra=extra)[0]
            if t < best:
                best, cpu, weed_cpu = t, run_build.cpu_seconds, process_cpu(server.proc.pid) - w0
            print(f"shardgen build s3:// -> local folder (round {r + 1}/{rounds}) ...", file=sys.stderr)
            shutil.rmtree(local_out, ignore_errors=True)
            w0 = process_cpu(server.proc.pid)
            t = run_build(url, local_out, size, workers, env=env, extra=extra)[0]
            if t < best_lo:
                best_lo, cpu_lo, weed_lo = t, run_build.cpu_seconds, process_cpu(server.proc.pid) - w0
        same = shard_sums(json.loads(fs.cat_file("bench/out/manifest.json"))) == shard_sums(manifest)
        with open(os.path.join(local_out, "manifest.json")) as f:
            same_lo = shard_sums(json.load(f)) == shard_sums(manifest)
        shutil.rmtree(local_out, ignore_errors=True)
    finally:
        server.stop()
        shutil.rmtree(os.path.join(root, "weed"), ignore_errors=True)
    # CPU seconds of the fastest round: the build's processes, and the SeaweedFS server (on the same
    # machine, it competes for the same cores); set them against the local build's CPU seconds.
    return {"s3_seconds": round(best, 2), "s3_images_per_s": round(n / best, 1),
            "s3_vs_local": round(t_local / best, 3), "s3_identical": same,
            "s3_build_cpu_seconds": round(cpu, 2), "s3_server_cpu_seconds": round(weed_cpu, 2),
            # s3:// SRC, OUT a local folder: the sources' reads alone
            "s3src_local_out_seconds": round(best_lo, 2), "s3src_local_out_vs_local": round(t_local / best_lo, 3),
            "s3src_local_out_identical": same_lo, "s3src_local_out_build_cpu_seconds": round(cpu_lo, 2),
            "s3src_local_out_server_cpu_seconds": round(weed_lo, 2)}


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and its waited-for children (``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
