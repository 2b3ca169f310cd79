#!/usr/bin/env python3
"""One decode per node: 1 rank against 2 ranks (torchrun, gloo) sharing one decoded cache.

For each rank count it starts ``torchrun --nproc_per_node=R`` on this script with a
fresh cache folder; the ranks split the node's ``--workers`` between them and run
``--epochs`` train epochs. It reports per epoch the node's samples/s (all ranks), the PNG
decodes the whole node made (every process counts its calls of the loaders' decoder into
a shared file), and the cache's bytes. With one decode per node the decodes stay at the
split's size whatever the number of ranks.

Usage:
    python tools/bench_node.py --source BUILD [--workers 2] [--epochs 3] [--batch_size 256]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rank_main(source: str, cache: str, count: str, workers: int, epochs: int, batch_size: int) -> None:
    """One rank: count decodes (forked DataLoader workers inherit the wrapper), run epochs."""
    sys.path.insert(0, ROOT)
    import torch.distributed as dist

    import loaders.read.samples as stream

    fd = os.open(count, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    decode = stream.decode_into

    def counting(*a, **k):  # the benchmark's own probe of the loaders' decoder
        os.write(fd, b"x")
        return decode(*a, **k)

    stream.decode_into = counting
    dist.init_process_group("gloo")
    from loaders import make_loader

    loader = make_loader(source, batch_size=batch_size, num_workers=workers, decoded_cache=cache)
    for e in range(epochs):
        dist.barrier()
        t0 = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        dt = time.perf_counter() - t0
        with open(f"{count}.rank{dist.get_rank()}", "a") as f:  # one file per rank: no interleaved lines
            f.write(json.dumps({"rank": dist.get_rank(), "epoch": e, "samples": n, "seconds": dt}) + "\n")
        loader.set_epoch(e + 1)
    loader.close()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(source: str, ranks: int, workers: int, epochs: int, batch_size: int) -> dict:
    work = tempfile.mkdtemp(prefix="bench-node-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        cache, count = os.path.join(work, "cache"), os.path.join(work, "decodes")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", os.path.abspath(__file__), "--rank_of", source, cache, count,
               str(max(1, workers // ranks)), str(epochs), str(batch_size)]
        subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
        recs = []
        for r in range(ranks):
            with open(f"{count}.rank{r}") as f:
                recs += [json.loads(line) for line in f]
        per_epoch = []
        for e in range(epochs):
            rs = [r for r in recs if r["epoch"] == e]
            per_epoch.append(round(sum(r["samples"] for r in rs) / max(r["seconds"] for r in rs), 1))
        size = sum(os.path.getsize(os.path.join(cache, f)) for f in os.listdir(cache) if f.endswith(".dec"))
        return {"ranks": ranks, "workers_per_rank": max(1, workers // ranks), "samples_per_s": per_epoch,
                "decodes": os.path.getsize(count) if os.path.exists(count) else 0, "cache_bytes": size}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--rank_of":
        a = sys.argv[2:]
        _rank_main(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", required=True)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers on the node, split between ranks")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    out = [run(args.source, r, args.workers, args.epochs, args.batch_size) for r in (1, 2)]
    for r in out:
        print(f"{r['ranks']} rank(s) x {r['workers_per_rank']} worker(s): node samples/s by epoch "
              f"{r['samples_per_s']}, decodes {r['decodes']}, cache {r['cache_bytes'] / 1e6:.1f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
