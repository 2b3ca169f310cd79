#!/usr/bin/env python3
"""``StyleGANShards``: samples/s of pass 1 and pass 2 with the decoded cache off and on.

The stream is endless: its first N samples (N = the split's size) are pass 1, the next N
pass 2. Each run starts from a fresh cache folder (removed afterwards). Runs alternate
off/on and on/off from round to round; the first round also runs in one process (no
DataLoader), which shows the dataset's own speed.

Usage:
    python tools/bench_stylegan.py --source BUILD [--rounds 2] [--workers 2] [--batch_size 64]
        [--place /dev/shm/sgbench-dec]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from loaders import StyleGANShards  # noqa: E402


def one_run(source: str, place: str | None, workers: int, batch_size: int) -> tuple[float, float]:
    """Samples/s of pass 1 and pass 2 (``place`` None: the cache off)."""
    if place is not None:
        shutil.rmtree(place, ignore_errors=True)
    ds = StyleGANShards(source, xflip=True, decoded_cache=place)
    n = sum(s.samples for s in ds.spec.shards)
    it = iter(torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=workers)) if workers else iter(ds)
    got, marks = 0, [(0, time.perf_counter())]
    for want in (n, 2 * n):
        while got < want:
            images = next(it)[0]  # a batch [B,1,S,S], or one image [1,S,S] without a DataLoader
            got += len(images) if workers else 1
        marks.append((got, time.perf_counter()))
    del it  # stops the workers
    if place is not None:
        shutil.rmtree(place, ignore_errors=True)
    return tuple((b - a) / (tb - ta) for (a, ta), (b, tb) in zip(marks, marks[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--place", default="/dev/shm/sgbench-dec")
    a = ap.parse_args()
    for r in range(a.rounds):
        for workers in ((a.workers, 0) if r == 0 else (a.workers,)):
            for place in ((None, a.place) if r % 2 == 0 else (a.place, None)):
                p1, p2 = one_run(a.source, place, workers, a.batch_size)
                print(f"round {r + 1} workers {workers} cache {'on ' if place else 'off'}: pass 1 {p1:8.0f}/s  "
                      f"pass 2 {p2:8.0f}/s  load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
