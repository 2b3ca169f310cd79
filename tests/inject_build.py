"""Run ``shardgen build`` with a fault injected at a chosen point, for the crash tests.

    python tests/inject_build.py POINT MARKER -- build SRC OUT [options]

POINT is one of
  chunk:N         after N conversion chunks are complete (use --workers 1)
  shard:N:K       inside shard number N (any split), after K samples were added
  manifest        half-way through writing manifest.json's temporary file
  after-manifest  after manifest.json is in place, before the scratch folder is removed
When the point is reached the script writes MARKER and sleeps, waiting to be killed.
Nothing here is part of shardgen; it patches functions in this process only.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import shardgen.build.convert as C  # noqa: E402
import shardgen.format as F  # noqa: E402
import shardgen.build.finish as O  # noqa: E402
from shardgen.__main__ import main  # noqa: E402


def hang(marker: str) -> None:
    with open(marker, "w") as f:
        f.write("reached\n")
    while True:
        time.sleep(1)


def install(point: str, marker: str) -> None:
    kind, *args = point.split(":")
    if kind == "chunk":
        n = int(args[0])
        orig = C.ChunkTask.__call__
        done = [0]

        def chunk_call(self, job):
            r = orig(self, job)
            done[0] += 1
            if done[0] == n:
                hang(marker)
            return r

        C.ChunkTask.__call__ = chunk_call
    elif kind == "shard":
        n, k = int(args[0]), int(args[1])
        orig_add = F.ShardWriter.add

        def add(self, key, fields):
            orig_add(self, key, fields)
            if self.path.endswith(f"-{n:06d}.tar") and self.samples == k:
                self._f.flush()
                hang(marker)

        F.ShardWriter.add = add
    elif kind == "manifest":
        orig_json = O.atomic_write_json

        def write_json(path, obj):
            if path.endswith("manifest.json"):
                data = F.dump_json(obj)
                tmp = os.path.join(os.path.dirname(path), ".tmp-injected-manifest.json")
                with open(tmp, "wb") as f:
                    f.write(data[: len(data) // 2])
                hang(marker)
            return orig_json(path, obj)

        O.atomic_write_json = write_json
    elif kind == "after-manifest":
        orig_rmtree = O.shutil.rmtree

        def rmtree(path, *a, **kw):
            if path.endswith(F.WORK_DIR):
                hang(marker)
            return orig_rmtree(path, *a, **kw)

        O.shutil.rmtree = rmtree
    else:
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    point, marker, sep, *argv = sys.argv[1:]
    assert sep == "--"
    install(point, marker)
    main(argv)
