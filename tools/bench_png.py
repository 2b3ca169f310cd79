#!/usr/bin/env python3
"""The sample PNG codec, before and after issue 13, side by side in one run.

    python tools/bench_png.py [--images 300] [--rounds 5] [--size 256]

On ``--images`` converted fake chest X-rays (``tools/stress_determinism.sample_arrays``):

- encode: CPU ms/image and bytes/image of shardgen's encoder with the Average filter (the
  encoder before issue 13, rebuilt here with the same libdeflate level) and with the Up
  filter (``shardgen.format.png.encode_png``), against Pillow's own PNG (zlib level 6,
  adaptive filters; issue 13 allows at most 1.15x its bytes);
- decode: CPU us/image of Pillow on the Average files (the loaders before), Pillow on the
  Up files, and the loaders' fast path on the Up files
  (``shardgen.format.png.decode_gray_png``), each into a preallocated ``S x S`` array.

Each figure is the median of ``--rounds`` interleaved rounds of process CPU time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import struct
import sys
import time
import zlib

import deflate
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import stress_determinism as stress  # noqa: E402
from shardgen.format.png import DEFLATE_LEVEL, decode_gray_png, encode_png  # noqa: E402


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def encode_average(a: np.ndarray) -> bytes:
    """The encoder before issue 13: filter 3 (Average) on every row, libdeflate at the same level."""
    h, w = a.shape
    up = np.zeros_like(a)
    up[1:] = a[:-1]
    left = np.zeros_like(a)
    left[:, 1:] = a[:, :-1]
    pred = (up & left) + ((up ^ left) >> 1)
    raw = np.empty((h, w + 1), np.uint8)
    raw[:, 0] = 3
    np.subtract(a, pred, out=raw[:, 1:])
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", bytes(deflate.zlib_compress(raw, DEFLATE_LEVEL))) + _chunk(b"IEND", b""))


def pillow_png(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def pil_decode(png: bytes, out: np.ndarray) -> bool:
    im = Image.open(io.BytesIO(png))
    im.load()
    out[...] = np.asarray(im)
    return True


def _cpu_per_item(fn, items) -> float:
    t = time.process_time()
    for x in items:
        fn(x)
    return (time.process_time() - t) / len(items)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    arrays = stress.sample_arrays(args.images, args.size)
    files = {"average": [encode_average(a) for a in arrays], "up": [encode_png(a) for a in arrays]}
    out = np.empty((args.size, args.size), np.uint8)
    for a, png in zip(arrays, files["up"]):
        assert decode_gray_png(png, out) and np.array_equal(out, a), "fast path gave other pixels"
    pillow_bytes = float(np.mean([len(pillow_png(a)) for a in arrays]))
    times: dict[str, list[float]] = {}
    runs = {
        "encode average": lambda: _cpu_per_item(encode_average, arrays),
        "encode up": lambda: _cpu_per_item(encode_png, arrays),
        "decode average, Pillow": lambda: _cpu_per_item(lambda p: pil_decode(p, out), files["average"]),
        "decode up, Pillow": lambda: _cpu_per_item(lambda p: pil_decode(p, out), files["up"]),
        "decode up, fast path": lambda: _cpu_per_item(lambda p: decode_gray_png(p, out), files["up"]),
    }
    for _ in range(args.rounds):
        for name, run in runs.items():
            times.setdefault(name, []).append(run())
    res = {name: round(float(np.median(v)) * 1e6, 1) for name, v in times.items()}
    for kind in ("average", "up"):
        b = float(np.mean([len(p) for p in files[kind]]))
        res[f"bytes {kind}"] = round(b)
        res[f"bytes {kind} / Pillow PNG"] = round(b / pillow_bytes, 3)
    res["bytes Pillow PNG"] = round(pillow_bytes)
    res["decode speed-up, fast path vs Pillow on Average"] = round(
        res["decode average, Pillow"] / res["decode up, fast path"], 2)
    for k, v in res.items():
        unit = " us CPU/image" if k.startswith(("encode", "decode ")) and "speed-up" not in k else ""
        print(f"{k:50s} {v}{unit}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"images": args.images, "size": args.size, "rounds": args.rounds, "results": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
