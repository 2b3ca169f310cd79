#!/usr/bin/env python3
"""Cost of ``make_loader(transform=...)``: ``transform=None`` against a baseline checkout,
and the per-sample cost of seeding.

1. ``seed_us``: one ``transform_seed`` (xxh64 of seed, epoch, key) plus
   ``torch.default_generator.manual_seed``, as a worker does before each call, in µs;
   ``seed_restore_us`` adds the ``get_state``/``set_state`` pair of ``num_workers=0``.
2. ``samples/s`` of a make_loader worker's own work (plan, tar reading, shuffle,
   decode into a batch; :meth:`ShardStream._batches` in this process, no IPC) with
   ``transform=None`` for this checkout and for ``--baseline`` (another checkout, e.g.
   the code before transforms), in alternating rounds, each in a fresh subprocess; and
   with an identity transform (the whole per-sample overhead: copy, seed, check, copy back).

Usage:
    python tools/bench_transform.py --source BUILD [--baseline /path/to/other/checkout] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def identity(x):
    return x


def _samples_per_s(source: str, seconds: float, with_transform: bool) -> float:
    """Run in a subprocess whose sys.path starts with the checkout under test."""
    import torch

    torch.set_num_threads(1)
    from loaders.read.spec import open_split
    from loaders.deliver.worker import ShardStream

    spec = open_split(source, "train")
    kw = {"transform": identity} if with_transform else {}
    ds = ShardStream(spec, 32, "train", 0, 0, 1, 1000, False, **kw)
    n, epoch, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in ds._batches(0, 1, False, epoch):
            n += 32
        epoch += 1
    return n / (time.perf_counter() - t0)


def seeding_us(calls: int = 200_000) -> dict:
    import torch

    from loaders.transform import transform_seed

    gen = torch.default_generator
    keys = [f"Normal_Normal-{i}" for i in range(1000)]
    saved = gen.get_state()
    t0 = time.perf_counter()
    for i in range(calls):
        gen.manual_seed(transform_seed(0, 3, keys[i % 1000]))
    seed = (time.perf_counter() - t0) / calls * 1e6
    t0 = time.perf_counter()
    for i in range(calls):
        s = gen.get_state()
        gen.manual_seed(transform_seed(0, 3, keys[i % 1000]))
        gen.set_state(s)
    restore = (time.perf_counter() - t0) / calls * 1e6
    gen.set_state(saved)
    return {"seed_us": round(seed, 2), "seed_restore_us": round(restore, 2)}


def _child(checkout: str, source: str, seconds: float, with_transform: bool) -> float:
    code = (f"import sys; sys.path.insert(0, {checkout!r}); sys.path.insert(0, {os.path.join(ROOT, 'tools')!r}); "
            f"import bench_transform as b; print(b._samples_per_s({source!r}, {seconds}, {with_transform}))")
    env = dict(os.environ, PYTHONPATH=checkout)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True, help="a shardgen build (8-bit grayscale PNG)")
    ap.add_argument("--baseline", help="another checkout to compare transform=None with")
    ap.add_argument("--seconds", type=float, default=3.0, help="per measurement (default 3)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    sys.path.insert(0, ROOT)
    res: dict = {"seeding": seeding_us()}
    runs: dict[str, list[float]] = {"none": [], "identity": []}
    if args.baseline:
        runs["baseline_none"] = []
    for _ in range(args.rounds):
        if args.baseline:
            runs["baseline_none"].append(_child(args.baseline, args.source, args.seconds, False))
        runs["none"].append(_child(ROOT, args.source, args.seconds, False))
        runs["identity"].append(_child(ROOT, args.source, args.seconds, True))
    res["samples_per_s"] = {k: {"median": round(sorted(v)[len(v) // 2], 1), "all": [round(x, 1) for x in v]}
                            for k, v in runs.items()}
    res["identity_us_per_sample"] = round(1e6 / res["samples_per_s"]["identity"]["median"]
                                          - 1e6 / res["samples_per_s"]["none"]["median"], 2)
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
