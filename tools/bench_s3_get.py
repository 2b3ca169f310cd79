#!/usr/bin/env python3
"""The CPU cost of one S3 read, client and server, side by side in one run (issue 12).

Starts a SeaweedFS server on loopback (``tests/s3server.py``), puts N objects of a given size
and reads them all, in batches of 16 as a build's chunk task does, three ways:

* ``s3fs``: ``fs.cat(batch, max_concurrency=1)`` (one GET per object through botocore);
* ``shardgen``: :func:`shardgen.storage.get.read_many` (presigned URLs over aiohttp, s3fs as
  the fallback);
* ``shardgen ranges``: :func:`shardgen.storage.get.read_ranges` of the objects' first halves.

and lists them with s3fs's ``find`` and with the build's streaming scan. Prints one JSON line:
client CPU, server CPU and wall per object, in ms (best of ``--rounds``).

Usage:
    python tools/bench_s3_get.py [--objects 1000] [--size 48000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from bench_dask_s3 import process_cpu  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _measure(fn, n: int, server_pid: int, rounds: int) -> dict[str, float]:
    """Per-object figures of ``fn`` (reading ``n`` objects), best of ``rounds`` after a warm-up
    (the clients' start: botocore's models, the HTTP sessions)."""
    fn()
    best = None
    for _ in range(rounds):
        w0, c0, t0 = process_cpu(server_pid), _cpu(), time.perf_counter()
        fn()
        row = (_cpu() - c0, process_cpu(server_pid) - w0, time.perf_counter() - t0)
        best = row if best is None or row[0] < best[0] else best
    return {"client_ms": round(best[0] / n * 1e3, 3), "server_ms": round(best[1] / n * 1e3, 3),
            "wall_ms": round(best[2] / n * 1e3, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--size", type=int, default=48000, help="bytes per object (a 299x299 PNG: about 48 KB)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)

    from s3server import SeaweedS3

    from shardgen.storage.location import location
    from shardgen.storage.get import read_many, read_ranges
    from shardgen.sources.url import _remote_tree

    with tempfile.TemporaryDirectory(prefix="bench-s3-get-") as tmp:
        server = SeaweedS3(tmp)
        server.start()
        try:
            server.make_bucket("bench")
            os.environ.update(server.env())
            fs = server.filesystem()
            paths = [f"bench/raw/Class{i % 4}/images/img-{i:06d}.png" for i in range(a.objects)]
            for i in range(0, len(paths), 500):
                fs.pipe({p: os.urandom(a.size) for p in paths[i:i + 500]})
            batches = [paths[i:i + 16] for i in range(0, len(paths), 16)]
            half = a.size // 2

            def via_s3fs():
                for b in batches:
                    fs.cat(b, on_error="return", max_concurrency=1)

            def via_shardgen():
                for b in batches:
                    read_many(fs, b)

            def ranges():
                for b in batches:
                    read_ranges(fs, b, [0] * len(b), [half] * len(b))

            def find():
                fs.invalidate_cache()
                fs.find("bench/raw", withdirs=True, detail=True)
                fs.invalidate_cache()

            loc = location("s3://bench/raw", endpoint_url=server.endpoint)
            pid, n = server.proc.pid, len(paths)
            out = {"objects": n, "bytes": a.size,
                   "get_s3fs": _measure(via_s3fs, n, pid, a.rounds),
                   "get_shardgen": _measure(via_shardgen, n, pid, a.rounds),
                   "range_shardgen": _measure(ranges, n, pid, a.rounds),
                   "list_s3fs_find": _measure(find, n, pid, a.rounds),
                   "list_shardgen_scan": _measure(lambda: _remote_tree(loc), n, pid, a.rounds)}
        finally:
            server.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
