#!/usr/bin/env python3
"""What mid-epoch resume costs: ``state_dict()`` in µs, and the time from
``load_state_dict`` to the first batch at 10%, 50% and 90% of an epoch against a fresh
start's first batch (same layout, then on another worker count), each in a new loader.

Usage:
    python tools/bench_resume.py --source BUILD [--workers 2] [--batch_size 256] [--rounds 3]

Every time is the median of ``--rounds`` runs, each a fresh ``make_loader`` whose
workers start from nothing (the files are in the page cache after the first round), with the
decoded cache off: the first batch is decoded from the shards, the slow path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from loaders import make_loader  # noqa: E402


def first_batch_s(source: str, workers: int, batch_size: int, state: dict | None) -> float:
    """Seconds from ``make_loader`` (+ ``load_state_dict``) to the first batch in hand."""
    t0 = time.perf_counter()
    ld = make_loader(source, batch_size=batch_size, num_workers=workers, seed=0, decoded_cache=None)
    if state is not None:
        ld.load_state_dict(state)
    next(iter(ld))
    dt = time.perf_counter() - t0
    ld.close()
    return dt


def state_at(source: str, workers: int, batch_size: int, fraction: float) -> dict:
    """A state ``fraction`` of the way through epoch 0 (made without iterating)."""
    ld = make_loader(source, batch_size=batch_size, num_workers=workers, seed=0, decoded_cache=None)
    st = ld.state_dict()
    st["batches"] = int(len(ld) * fraction)
    return st


def state_dict_us(source: str, workers: int, batch_size: int, calls: int = 20000) -> float:
    ld = make_loader(source, batch_size=batch_size, num_workers=workers, seed=0, decoded_cache=None)
    it = iter(ld)
    next(it)
    t0 = time.perf_counter()
    for _ in range(calls):
        ld.state_dict()
    dt = (time.perf_counter() - t0) / calls * 1e6
    ld.close()
    return dt


def run(source: str, workers: int, batch_size: int, rounds: int) -> dict:
    res: dict = {"state_dict_us": round(state_dict_us(source, workers, batch_size), 2)}
    cases = [("fresh", None, workers)]
    for f in (0.1, 0.5, 0.9):
        cases.append((f"same layout at {f:.0%}", state_at(source, workers, batch_size, f), workers))
    other = 1 if workers > 1 else 2
    cases.append((f"{other} worker(s) at 50%", state_at(source, other, batch_size, 0.5), workers))
    first_batch_s(source, workers, batch_size, None)  # warm the page cache
    for name, st, nw in cases:
        times = [first_batch_s(source, nw, batch_size, st) for _ in range(rounds)]
        res[name] = round(statistics.median(times), 3)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    res = run(args.source, args.workers, args.batch_size, args.rounds)
    fresh = res["fresh"]
    print(f"state_dict(): {res['state_dict_us']} us")
    for k, v in res.items():
        if k != "state_dict_us":
            print(f"first batch, {k:<24} {v:6.3f} s  ({v / fresh:.2f}x fresh)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
