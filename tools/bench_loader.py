#!/usr/bin/env python3
"""Samples/s of ``loaders.make_loader`` next to three references, same shards, same run.

1. ``make_loader``: this package (train mode, shuffle buffer 1000).
2. ``webdataset``: the stock pipeline from the webdataset docs,
   ``WebDataset(urls).shuffle(1000).decode("pil").to_tuple("png", "cls")``, images to
   tensors, ``.batched(B)``, in a ``WebLoader`` with the same number of workers.
3. ``files``: a plain ``DataLoader`` (shuffle, batch B) over one PNG file per sample
   (the shards' PNGs extracted to a folder).
4. ``ceiling``: PNG decode alone (PIL, the decoder the loaders use), the encoded bytes
   already in memory, one process per worker, no batching, no IPC.
5. ``reader`` (only with ``--only``): a make_loader worker's own work (plan, tar
   reading, shuffle buffer, decode into a batch slot) in one process per worker, with
   nothing handed to a main process: separates the workers' cost from delivery.
6. ``epochs``: ``make_loader`` epoch by epoch, with the decoded cache off and on (a
   fresh cache folder in ``/dev/shm`` when there is one): samples/s of epoch 1 (which
   fills the cache), epoch 3, and epochs 3 and later together (at least ``--seconds``),
   the cache's bytes and the workers' peak memory. ``make_loader`` (2.) runs with the
   cache off: it measures the decoding path.

Every pipeline yields ``uint8 [B,1,S,S]`` batches with int64 labels to the main
process. The peak memory of each worker process is sampled from ``/proc``: the
kernel's peak resident set (VmHWM, which also counts pages shared with the parent
after fork) and the largest private (unshared) resident memory seen.

Usage:
    python tools/bench_loader.py                          # makes a build in bench-out/ (256x256)
    python tools/bench_loader.py --source OUT --workers 16 --seconds 20 --json bench.json
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from loaders import make_loader  # noqa: E402
from shardgen.cpus import usable_cpus  # noqa: E402
from shardgen.storage import open_build  # noqa: E402


# -- memory of worker processes ------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _own_private(pid: int, folder: str) -> int:
    """Private resident bytes of ``pid`` outside its mappings of files under ``folder``
    (one read of ``/proc/PID/smaps``). The decoded cache's pages a worker has read (and
    no other process maps) count in VmHWM and "private", but they are the cache's
    (shared) memory, not the worker's own."""
    total, inside = 0, False
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                head = line.split(None, 5)
                if "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):  # a mapping's first line
                    inside = len(head) == 6 and head[5].strip().startswith(folder)
                elif not inside and head[0] in ("Private_Clean:", "Private_Dirty:"):
                    total += int(head[1]) * 1024
    except OSError:
        pass
    return total


def _mem(pid: int) -> tuple[int, int]:
    """(VmHWM, private resident bytes) of ``pid``; zeros if it is gone."""
    hwm = priv = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    priv += int(line.split()[1]) * 1024
    except OSError:
        pass
    return hwm, priv


class MemWatch:
    """Sample the memory of this process's children every 0.5 s (with ``cache``, also the
    largest private memory net of mapped decoded-cache pages: ``own``)."""

    def __init__(self, cache: str | None = None):
        self.hwm = 0
        self.private = 0
        self.own = 0
        self.cache = cache
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        me = os.getpid()
        kids, found = [], 0.0
        while not self._stop.wait(0.5):
            if time.monotonic() - found > 1.0:  # listing /proc is the expensive part
                kids, found = _children(me), time.monotonic()
            for c in kids:
                h, p = _mem(c)
                own = _own_private(c, self.cache) if self.cache else p
                self.hwm, self.private, self.own = max(self.hwm, h), max(self.private, p), max(self.own, own)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


# -- the pipelines ---------------------------------------------------------------------------------
def _cpu() -> float:
    """CPU seconds of this process and its reaped children."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def run_epochs(make_iter, seconds: float, min_epochs: int = 1, done=None) -> dict:
    """Iterate whole epochs until ``seconds`` have passed; samples/s over all of them.

    Also the CPU time of the whole process tree per sample (workers are joined first,
    ``done`` stops persistent ones), which a busy machine does not distort as much.
    """
    samples = 0
    epochs = 0
    c0 = _cpu()
    m0 = resource.getrusage(resource.RUSAGE_SELF)
    with MemWatch() as mw:
        t0 = time.perf_counter()
        while epochs < min_epochs or time.perf_counter() - t0 < seconds:
            for batch in make_iter(epochs):
                samples += int(batch[0].shape[0])
            epochs += 1
        dt = time.perf_counter() - t0
    m1 = resource.getrusage(resource.RUSAGE_SELF)
    if done is not None:
        done()
    cpu = _cpu() - c0
    main_cpu = (m1.ru_utime + m1.ru_stime) - (m0.ru_utime + m0.ru_stime)
    return {"samples": samples, "seconds": round(dt, 3), "samples_per_s": round(samples / dt, 1),
            "cpu_us_per_sample": round(cpu / samples * 1e6, 1),
            "main_process_cpu_share": round(main_cpu / dt, 3),
            "epochs": epochs, "worker_peak_rss_mb": round(mw.hwm / 2**20, 1),
            "worker_peak_private_mb": round(mw.private / 2**20, 1)}


def bench_make_loader(source, split, batch_size, workers, seconds, pin=False):
    loader = make_loader(source, split=split, batch_size=batch_size, num_workers=workers, pin_memory=pin,
                         decoded_cache=None)

    def it(epoch):
        loader.set_epoch(epoch)
        return iter(loader)

    return run_epochs(it, seconds, done=loader.close)


def _tree_cpu() -> float:
    """CPU seconds of this process and its live children (workers that are still running)."""
    a = resource.getrusage(resource.RUSAGE_SELF)
    tick = os.sysconf("SC_CLK_TCK")
    total = a.ru_utime + a.ru_stime
    for c in _children(os.getpid()):
        try:
            with open(f"/proc/{c}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def _allocated(folder: str) -> int:
    return sum(os.stat(os.path.join(folder, n)).st_blocks * 512 for n in os.listdir(folder))


def bench_epochs(source, split, batch_size, workers, seconds, pin=False, cache=False):
    """Samples/s of epoch 1, epoch 3 and epochs 3+ (at least ``seconds``) of one loader,
    the decoded cache on (a fresh folder, removed afterwards) or off."""
    folder = tempfile.mkdtemp(prefix="bench-decoded-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        t0, c0 = time.perf_counter(), _tree_cpu()
        loader = make_loader(source, split=split, batch_size=batch_size, num_workers=workers, pin_memory=pin,
                             decoded_cache=folder if cache else None)
        first, rates, later, later_s, cpu1 = None, [], 0, 0.0, 0.0
        with MemWatch(folder) as mw:
            while len(rates) < 3 or later_s < seconds:
                loader.set_epoch(len(rates))
                n, t = 0, time.perf_counter()
                for batch in loader:
                    if first is None:
                        first = time.perf_counter() - t0
                    n += int(batch[0].shape[0])
                dt = time.perf_counter() - t
                if not rates:
                    cpu1 = (_tree_cpu() - c0) / n
                rates.append(n / dt)
                if len(rates) >= 3:
                    later, later_s = later + n, later_s + dt
        loader.close()
        return {"samples": n * len(rates), "first_batch_s": round(first, 3), "epochs": len(rates),
                "epoch1_samples_per_s": round(rates[0], 1), "epoch3_samples_per_s": round(rates[2], 1),
                "epoch1_cpu_us_per_sample": round(cpu1 * 1e6, 1),
                "samples_per_s": round(later / later_s, 1), "cache_bytes": _allocated(folder),
                "worker_peak_rss_mb": round(mw.hwm / 2**20, 1), "worker_peak_private_mb": round(mw.private / 2**20, 1),
                "worker_peak_own_mb": round(mw.own / 2**20, 1)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _to_tensor(im):
    return torch.from_numpy(np.array(im)).unsqueeze(0)


def _label(x):
    return int(x)


def bench_webdataset(urls, batch_size, workers, seconds, pin=False):
    import webdataset as wds

    ds = (wds.WebDataset(urls, shardshuffle=len(urls), nodesplitter=wds.split_by_node)
          .shuffle(1000).decode("pil").to_tuple("png", "cls").map_tuple(_to_tensor, _label)
          .batched(batch_size, partial=False))
    loader = wds.WebLoader(ds, batch_size=None, num_workers=workers, pin_memory=pin)
    return run_epochs(lambda e: iter(loader), seconds)


class PngFiles(torch.utils.data.Dataset):
    """One PNG file per sample; labels in a list."""

    def __init__(self, paths, labels):
        self.paths, self.labels = paths, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        with Image.open(self.paths[i]) as im:
            return _to_tensor(im), self.labels[i]


def bench_files(paths, labels, batch_size, workers, seconds, pin=False):
    loader = torch.utils.data.DataLoader(PngFiles(paths, labels), batch_size=batch_size, shuffle=True,
                                         drop_last=True, num_workers=workers, pin_memory=pin)
    return run_epochs(lambda e: iter(loader), seconds)


def _decode_worker(args):
    pngs, seconds, start_at = args
    while time.time() < start_at:
        time.sleep(0.001)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for p in pngs:
            im = Image.open(io.BytesIO(p), formats=("PNG",))
            im.load()
            np.asarray(im)
        n += len(pngs)
    dt = time.perf_counter() - t0
    return n, dt, _mem(os.getpid())


def _reader_worker(args):
    """Everything a make_loader worker does (plan, read tar, shuffle, decode into a batch
    slot), minus handing the batch to the main process; epochs until ``seconds``."""
    source, split, batch_size, worker, workers, seconds, start_at = args
    # One intra-op thread, as in a DataLoader worker (and OpenMP's pool, inherited from
    # the parent by fork, is not usable here: the ring's share_memory_() copy would hang).
    torch.set_num_threads(1)
    from loaders.deliver.ring import Ring
    from loaders.read.spec import open_split
    from loaders.deliver.worker import ShardStream

    spec = open_split(source, split)
    ds = ShardStream(spec, batch_size, "train", 0, 0, 1, 1000, False)
    ds.ring = Ring(workers, 3, batch_size, spec.size)
    state = ds.ring.state.numpy()
    while time.time() < start_at:
        time.sleep(0.001)
    n, epoch, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for b in ds._batches(worker, workers, True, epoch):
            state[worker, b.slot] = 0  # consumed at once
            n += batch_size
        epoch += 1
    return n, time.perf_counter() - t0, _mem(os.getpid())


def bench_reader(source, split, batch_size, workers, seconds):
    workers = max(1, workers)
    start_at = time.time() + 2.0
    c0 = _cpu()
    pool = mp.get_context("fork").Pool(workers)
    res = pool.map(_reader_worker, [(source, split, batch_size, w, workers, seconds, start_at)
                                    for w in range(workers)])
    pool.close()
    pool.join()
    cpu = _cpu() - c0
    samples = sum(n for n, _, _ in res)
    return {"samples": samples, "seconds": round(max(dt for _, dt, _ in res), 3),
            "samples_per_s": round(sum(n / dt for n, dt, _ in res), 1),
            "cpu_us_per_sample": round(cpu / samples * 1e6, 1),
            "worker_peak_rss_mb": round(max(m[0] for _, _, m in res) / 2**20, 1),
            "worker_peak_private_mb": round(max(m[1] for _, _, m in res) / 2**20, 1)}


def bench_ceiling(pngs, workers, seconds):
    workers = max(1, workers)
    shares = [pngs[i::workers] for i in range(workers)]
    start_at = time.time() + 1.0
    c0 = _cpu()
    pool = mp.get_context("fork").Pool(workers)
    res = pool.map(_decode_worker, [(s, seconds, start_at) for s in shares])
    pool.close()
    pool.join()
    cpu = _cpu() - c0
    total = sum(n / dt for n, dt, _ in res)
    samples = sum(n for n, _, _ in res)
    return {"samples": samples, "seconds": round(max(dt for _, dt, _ in res), 3),
            "samples_per_s": round(total, 1), "cpu_us_per_sample": round(cpu / samples * 1e6, 1),
            "worker_peak_rss_mb": round(max(m[0] for _, _, m in res) / 2**20, 1),
            "worker_peak_private_mb": round(max(m[1] for _, _, m in res) / 2**20, 1)}


# -- data ---------------------------------------------------------------------------------------------
def ensure_build(args) -> str:
    if args.source:
        return args.source
    if args.per_class is None:
        args.per_class = max(300, 160 * max(1, args.workers))
    out = os.path.join(args.work, f"loader-{args.size}-{args.per_class}")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        src = os.path.join(args.work, "loader-src")
        base = os.path.join(src, "COVID-19_Radiography_Dataset")
        if not os.path.isdir(base):
            subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_sample_dataset.py"), src,
                            "--per_class", str(args.per_class), "--seed", "0"], check=True)
        subprocess.run([sys.executable, "-m", "shardgen", "build", base, out, "--size", str(args.size),
                        "--shard_size", str(args.shard_size), "--splits", "train=1.0", "--progress", "false"],
                       check=True, cwd=ROOT)
    return out


def extract(source: str, split: str, folder: str):
    """PNG bytes, labels, and one file per sample under ``folder`` (reused if present)."""
    build = open_build(source)
    pngs, labels, paths = [], [], []
    os.makedirs(folder, exist_ok=True)
    for sh in build.split(split).shards:
        with build.open(sh.path) as f, tarfile.open(fileobj=f, mode="r|") as tf:
            cur = {}
            for m in tf:
                key, ext = m.name.split(".", 1)
                cur.setdefault(key, {})[ext] = tf.extractfile(m).read()
            for key, parts in cur.items():
                pngs.append(parts["png"])
                labels.append(int(parts["cls"]))
                p = os.path.join(folder, key + ".png")
                if not os.path.exists(p):
                    with open(p, "wb") as g:
                        g.write(parts["png"])
                paths.append(p)
    urls = [build.url(sh.path) for sh in build.split(split).shards]
    return pngs, labels, paths, urls, build.manifest.image.size


def run_once(name: str, source: str, args) -> dict:
    """The parts measured once: resume costs (``bench_resume``) and transform costs
    (``bench_transform``: one worker's samples/s with ``transform=None`` and an identity
    transform, and the seeding per sample)."""
    if name == "node":
        import bench_node

        r = {f"ranks_{k}": bench_node.run(source, k, args.workers, 3, args.batch_size) for k in (1, 2)}
        for v in r.values():
            print(f"node: {v['ranks']} rank(s) x {v['workers_per_rank']} worker(s): samples/s by epoch "
                  f"{v['samples_per_s']}, decodes {v['decodes']}, cache {v['cache_bytes'] / 1e6:.1f} MB", flush=True)
        return r
    if name == "resume":
        import bench_resume

        r = bench_resume.run(source, args.workers, args.batch_size, args.rounds)
        fresh = r["fresh"]
        print(f"resume: state_dict() {r['state_dict_us']} us; first batch after load_state_dict: " + ", ".join(
            f"{k} {v:.2f} s ({v / fresh:.2f}x)" for k, v in r.items() if k != "state_dict_us"), flush=True)
        return r
    import bench_transform

    r = {"seeding": bench_transform.seeding_us()}
    for label, tf in (("none", False), ("identity", True)):
        r[label] = round(max(bench_transform._child(ROOT, source, max(1.0, args.seconds / 3), tf)
                             for _ in range(args.rounds)), 1)
    r["identity_us_per_sample"] = round(1e6 / r["identity"] - 1e6 / r["none"], 2)
    print(f"transform: one worker {r['none']} samples/s with transform=None, {r['identity']} with an identity "
          f"transform ({r['identity_us_per_sample']} us/sample); seeding {r['seeding']['seed_us']} us/sample",
          flush=True)
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", help="a shardgen build (default: make bench-out/loader-SIZE)")
    ap.add_argument("--split", default="train")
    ap.add_argument("--workers", type=int, default=usable_cpus())
    ap.add_argument("--batch_size", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0, help="minimum time per pipeline (default 10)")
    ap.add_argument("--size", type=int, default=256, help="image size of the generated build (default 256)")
    ap.add_argument("--per_class", type=int, default=None,
                    help="images per class of the generated build (default: 160 per worker, at least 300, "
                         "so that every worker has several batches per epoch)")
    ap.add_argument("--shard_size", type=int, default=100)
    ap.add_argument("--only", default="ceiling,make_loader,epochs,webdataset,files,resume,transform,node",
                    help="pipelines (and the once-only parts resume: state_dict and first batch after "
                         "load_state_dict, transform: transform=None against an identity transform and seeding, "
                         "node: 1 and 2 torchrun ranks sharing one decoded cache)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="run the pipelines in turn this many times and keep each one's best (default 2)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--pin", action="store_true",
                    help="pin batches (pin_memory=True) in the three DataLoader pipelines, as GPU training does")
    ap.add_argument("--work", default=os.path.join(ROOT, "bench-out"),
                    help="folder for the generated build and the extracted PNG files (default bench-out/)")
    args = ap.parse_args(argv)

    source = ensure_build(args)
    folder = os.path.join(args.work, "loader-files-" + os.path.basename(os.path.abspath(source)))
    pngs, labels, paths, urls, size = extract(source, args.split, folder)
    print(f"{len(pngs)} samples in {len(urls)} shards, {size}x{size}, mean PNG {np.mean([len(p) for p in pngs]) / 1024:.1f} KiB; "
          f"workers {args.workers}, batch {args.batch_size}, pin_memory {args.pin}, cpus {os.cpu_count()}, "
          f"torch {torch.__version__}",
          flush=True)
    results: dict = {}
    todo = args.only.split(",")
    once = [t for t in todo if t in ("resume", "transform", "node")]
    todo = [t for t in todo if t not in once]
    for rnd in range(args.rounds):
        for name in todo:
            if name == "ceiling":
                r = bench_ceiling(pngs, args.workers, args.seconds)
            elif name == "reader":
                r = bench_reader(source, args.split, args.batch_size, args.workers, args.seconds)
            elif name == "make_loader":
                r = bench_make_loader(source, args.split, args.batch_size, args.workers, args.seconds, args.pin)
            elif name == "epochs":
                for on in (False, True):
                    r = bench_epochs(source, args.split, args.batch_size, args.workers, args.seconds, args.pin, on)
                    label = f"cache {'on' if on else 'off'}"
                    print(f"round {rnd + 1}: {label:12s} epoch 1 {r['epoch1_samples_per_s']:9.1f}  epoch 3 "
                          f"{r['epoch3_samples_per_s']:9.1f}  epochs 3+ {r['samples_per_s']:9.1f} samples/s   "
                          f"epoch 1 {r['epoch1_cpu_us_per_sample']:.0f} us CPU/sample   "
                          f"first batch {r['first_batch_s']} s   cache {r['cache_bytes'] / 1e6:.1f} MB   worker peak RSS "
                          f"{r['worker_peak_rss_mb']:7.1f} MB, private {r['worker_peak_private_mb']:6.1f} MB, "
                          f"without cache pages {r['worker_peak_own_mb']:6.1f} MB", flush=True)
                    key = f"epochs_cache_{'on' if on else 'off'}"
                    if key not in results or r["samples_per_s"] > results[key]["samples_per_s"]:
                        results[key] = r
                continue
            elif name == "webdataset":
                r = bench_webdataset(urls, args.batch_size, args.workers, args.seconds, args.pin)
            elif name == "files":
                r = bench_files(paths, labels, args.batch_size, args.workers, args.seconds, args.pin)
            else:
                ap.error(f"unknown pipeline {name}")
            print(f"round {rnd + 1}: {name:12s} {r['samples_per_s']:9.1f} samples/s  {r['cpu_us_per_sample']:7.1f} us CPU/sample"
                  f"   worker peak RSS "
                  f"{r['worker_peak_rss_mb']:7.1f} MB, private {r['worker_peak_private_mb']:6.1f} MB   "
                  f"({r['samples']} samples in {r['seconds']} s"
                  + (f", main process {r['main_process_cpu_share']:.0%} of a core)" if "main_process_cpu_share" in r else ")"),
                  flush=True)
            if name not in results or r["samples_per_s"] > results[name]["samples_per_s"]:
                results[name] = r
    for name in once:
        results[name] = run_once(name, source, args)
    print(f"best of {args.rounds} round(s):")
    for name, r in results.items():
        if name in once:
            continue
        if name.startswith("epochs_"):
            print(f"  {name:20s} epoch 1 {r['epoch1_samples_per_s']:9.1f}, epoch 3 {r['epoch3_samples_per_s']:9.1f}, "
                  f"epochs 3+ {r['samples_per_s']:9.1f} samples/s, cache {r['cache_bytes'] / 1e6:.1f} MB, worker peak "
                  f"RSS {r['worker_peak_rss_mb']:7.1f} MB, private {r['worker_peak_private_mb']:6.1f} MB")
            continue
        print(f"  {name:12s} {r['samples_per_s']:9.1f} samples/s  {r['cpu_us_per_sample']:7.1f} us CPU/sample   worker peak RSS {r['worker_peak_rss_mb']:7.1f} MB, "
              f"private {r['worker_peak_private_mb']:6.1f} MB")
    if "ceiling" in results and "make_loader" in results:
        c = results["make_loader"]["samples_per_s"] / results["ceiling"]["samples_per_s"]
        print(f"make_loader / ceiling    = {c:.2f}  (target >= 0.9)")
        results["ratio_to_ceiling"] = round(c, 3)
    if "ceiling" in results and "epochs_cache_on" in results:
        c = results["ceiling"]["samples_per_s"]
        on, off = results["epochs_cache_on"], results["epochs_cache_off"]
        print(f"epochs 3+ cache on / ceiling = {on['samples_per_s'] / c:.2f}  (target >= 8); "
              f"epoch 1 cache on / off = {on['epoch1_samples_per_s'] / off['epoch1_samples_per_s']:.2f}  (target >= 1)")
        results["cache_on_ratio_to_ceiling"] = round(on["samples_per_s"] / c, 3)
    if "webdataset" in results and "make_loader" in results:
        w = results["make_loader"]["samples_per_s"] / results["webdataset"]["samples_per_s"]
        print(f"make_loader / webdataset = {w:.2f}  (target >= 2)")
        results["ratio_to_webdataset"] = round(w, 3)
    if args.json:
        meta = {"workers": args.workers, "batch_size": args.batch_size, "pin_memory": args.pin, "samples": len(pngs), "shards": len(urls),
                "size": size, "cpus": os.cpu_count(), "torch": torch.__version__}
        with open(args.json, "w") as f:
            json.dump({"config": meta, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
