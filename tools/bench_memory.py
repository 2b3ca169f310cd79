#!/usr/bin/env python3
"""The build's client memory per image: the peak RSS of the ``shardgen build`` process
(not its workers) on N generated tiny images, as bytes per image over a small build's.

Issue 12's goal is at most 300 bytes per image held by the client. The images are 8x8
grayscale PNGs in an ImageFolder layout of 4 classes (file names like real ones, about
20 characters), built at ``--size 8`` so that the per-image bookkeeping, not pixel work,
dominates.

Usage:
    python tools/bench_memory.py [--images 200000] [--root bench-out/memory] [--workers 2] [--scheduler local:2]
        [--index single|multi [--split_lists]] [--shard_size 10000] [--zip]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from bench_build import PeakRSS  # noqa: E402

CLASSES = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")


class ClientMonitor(PeakRSS):
    """:class:`PeakRSS` that also keeps the process's own CPU time (user + system, seconds;
    not its children's) as last read, at most one poll before it exits."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.cpu = 0.0

    def sample(self) -> None:
        super().sample()
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        self.cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def make_tiny(root: str, n: int) -> str:
    """``n`` distinct 8x8 PNGs under ``root/src/<class>/`` (reused when complete)."""
    import numpy as np
    from PIL import Image

    src = os.path.join(root, f"src-{n}")
    if os.path.exists(os.path.join(src, ".complete")):
        return src
    shutil.rmtree(src, ignore_errors=True)
    for c in CLASSES:
        os.makedirs(os.path.join(src, c))
    for i in range(n):
        px = np.frombuffer(i.to_bytes(8, "little") * 8, dtype=np.uint8).reshape(8, 8)  # distinct pixels
        buf = io.BytesIO()
        Image.fromarray(px, "L").save(buf, "PNG", compress_level=1)
        c = CLASSES[i % len(CLASSES)]
        with open(os.path.join(src, c, f"{c}-{i:07d}.png"), "wb") as f:
            f.write(buf.getvalue())
    open(os.path.join(src, ".complete"), "w").close()
    return src


def make_index(src: str, n: int, multi: bool) -> list[str]:
    """A CSV index of the ``n`` images of :func:`make_tiny` (``path,label,patient``, three
    images per patient; multi-label: every fifth image also has the finding ``Effusion``);
    returns the build flags that read it."""
    path = os.path.join(src, f"index-{'multi' if multi else 'single'}.csv")
    if not os.path.exists(path):
        with open(path + ".tmp", "w") as f:
            f.write("path,label,patient\n")
            for i in range(n):
                c = CLASSES[i % len(CLASSES)]
                label = f"{c}|Effusion" if multi and i % 5 == 0 else c
                f.write(f"{c}/{c}-{i:07d}.png,{label},p{i // 3}\n")
        os.replace(path + ".tmp", path)
    flags = ["--index", path, "--columns", "group=patient"]
    return flags + (["--label_sep", "|"] if multi else [])


def make_split_lists(src: str, n: int) -> list[str]:
    """ChestX-ray14-style official lists of the ``n`` images of :func:`make_tiny` beside the
    index: ``train_val_list.txt`` (4 images of 5, bare file names) and ``test_list.txt`` (the
    rest); a few test entries as paths relative to SRC, a few entries of images that are not
    in the index, and the last 3 images in no list (skipped). Patients (3 images each) cross
    the lists, as the leakage note counts. Returns the build flags."""
    paths = [os.path.join(src, f"{name}_list-{n}.txt") for name in ("train_val", "test")]
    if not all(os.path.exists(p) for p in paths):
        with open(paths[0] + ".tmp", "w") as train, open(paths[1] + ".tmp", "w") as test:
            for i in range(n - 3):
                c = CLASSES[i % len(CLASSES)]
                if i % 5:
                    train.write(f"{c}-{i:07d}.png\n")
                else:
                    test.write(f"{c}/{c}-{i:07d}.png\n" if i % 1000 == 0 else f"{c}-{i:07d}.png\n")
            test.write("".join(f"not-indexed-{k}.png\n" for k in range(5)))
        for p in paths:
            os.replace(p + ".tmp", p)
    return ["--split_lists", f"train={paths[0]},test={paths[1]}"]


def upload(server, src: str) -> str:
    """``src`` put into the SeaweedFS ``server`` (bucket ``bench``), 2,000 objects per call; its URL."""
    fs = server.filesystem()
    name = os.path.basename(src)
    batch: dict[str, bytes] = {}
    for c in sorted(os.listdir(src)):
        if not os.path.isdir(os.path.join(src, c)):
            continue
        for f in sorted(os.listdir(os.path.join(src, c))):
            with open(os.path.join(src, c, f), "rb") as fh:
                batch[f"bench/{name}/{c}/{f}"] = fh.read()
            if len(batch) == 2000:
                fs.pipe(batch)
                batch = {}
    if batch:
        fs.pipe(batch)
    return f"s3://bench/{name}"


def peak_rss(src: str, out: str, workers: int, scheduler: str | None = None,
             flags: list[str] | None = None, shard_size: int = 10_000,
             env_extra: dict | None = None) -> tuple[int, float, float]:
    """Peak RSS (bytes) of the build's main process, its wall time and its own CPU time (s). With ``scheduler``
    (``local:N``) the build runs on a Dask cluster: the main process is the Dask client, with
    the local cluster's scheduler inside it (its workers are other processes, not counted)."""
    extra = (["--scheduler", scheduler] if scheduler else ["--workers", str(workers)]) + list(flags or [])
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, PYTHONPATH=ROOT, **(env_extra or {}))
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "shardgen", "build", src, out, "--size", "8",
                          "--progress", "false", "--shard_size", str(shard_size), *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    mon = ClientMonitor(p.pid)
    mon.start()
    _, err = p.communicate()
    mon.join(timeout=5)
    if p.returncode != 0:
        raise SystemExit(f"build failed:\n{err}")
    shutil.rmtree(out, ignore_errors=True)
    return mon.peak, time.perf_counter() - t0, mon.cpu


def make_zip(src: str) -> str:
    """``src`` packed into ``src.zip`` (members stored, as image archives usually are); reused."""
    import zipfile

    dest = src + ".zip"
    if not os.path.exists(dest):
        with zipfile.ZipFile(dest + ".part", "w", zipfile.ZIP_STORED) as zf:
            for d, _, files in sorted(os.walk(src)):
                for f in sorted(files):
                    if not f.startswith("."):
                        p = os.path.join(d, f)
                        zf.write(p, os.path.relpath(p, src))
        os.replace(dest + ".part", dest)
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--base", type=int, default=2_000, help="the small build subtracted (default 2,000)")
    ap.add_argument("--root", default=os.path.join(ROOT, "bench-out", "memory"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--scheduler", default=None, help="e.g. local:2: measure the Dask build's client instead")
    ap.add_argument("--index", choices=("single", "multi"), default=None,
                    help="build through a CSV index with a patient column (multi: multi-label)")
    ap.add_argument("--split_lists", action="store_true",
                    help="with --index: official train/test list files give the splits (ChestX-ray14 style)")
    ap.add_argument("--shard_size", type=int, default=10_000,
                    help="samples per shard (default 10,000, as the figures in benchmarks.md; the build's own default is "
                         "1,000). A Dask build holds a window of shard jobs in flight, so its constant grows with this")
    ap.add_argument("--zip", action="store_true", help="SRC packed into one stored .zip, read in place")
    ap.add_argument("--s3", action="store_true",
                    help="SRC uploaded to a SeaweedFS server on loopback (tests/s3server.py), OUT local")
    args = ap.parse_args(argv)
    if args.split_lists and not args.index:
        ap.error("--split_lists needs --index")
    server = None
    if args.s3:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from s3server import SeaweedS3

        server = SeaweedS3(os.path.join(args.root, "weed"), volumes=40)
        server.start()
        server.make_bucket("bench")
    res = {}
    try:
        for n in (args.base, args.images):
            src = make_tiny(args.root, n)
            flags = make_index(src, n, args.index == "multi") if args.index else None
            if args.split_lists:
                flags += make_split_lists(src, n)
            if args.zip:
                src = make_zip(src)
            if server is not None:
                print(f"uploading {n:,} images to SeaweedFS ...", file=sys.stderr)
                src = upload(server, src)
            res[n] = peak_rss(src, os.path.join(args.root, "out"), args.workers, args.scheduler, flags,
                              args.shard_size, server.env() if server else None)
    finally:
        if server is not None:
            server.stop()
            shutil.rmtree(os.path.join(args.root, "weed"), ignore_errors=True)
    (b_rss, _, _), (rss, secs, cpu) = res[args.base], res[args.images]
    per = (rss - b_rss) / (args.images - args.base)
    out = {"images": args.images, "scheduler": args.scheduler, "index": args.index, "s3": args.s3, "zip": args.zip,
           "split_lists": args.split_lists, "shard_size": args.shard_size,
           "base_images": args.base, "peak_rss_bytes": rss, "base_peak_rss_bytes": b_rss,
           "bytes_per_image": round(per), "build_seconds": round(secs, 1),
           "client_cpu_seconds": round(cpu, 1)}
    print(f"{args.images:,} images: build main process peak RSS {rss / 2**20:.0f} MiB "
          f"({args.base:,} images: {b_rss / 2**20:.0f} MiB) -> {per:.0f} bytes per image (goal <= 300); "
          f"build {secs:.0f} s, client CPU {cpu:.1f} s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
