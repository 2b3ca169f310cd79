#!/usr/bin/env python3
"""Generate a synthetic dataset in the Kaggle COVID-19 Radiography layout.

    ROOT/COVID-19_Radiography_Dataset/<Class>/images/<Class>-<n>.png   299x299 grayscale PNG
    ROOT/COVID-19_Radiography_Dataset/<Class>/masks/<Class>-<n>.png    lung masks (not training data)
    ROOT/COVID-19_Radiography_Dataset/<Class>.metadata.xlsx, README.md.txt

The images look vaguely like chest X-rays (two dark lung fields, ribs, noise) so that
compression ratios are realistic. Some Viral Pneumonia images are stored as 3-channel
RGB with equal channels, as in the real dataset.

Usage:
    python tools/make_sample_dataset.py ROOT --per_class 60
    python tools/make_sample_dataset.py ROOT --full            # 21,165 images, real class sizes
    python tools/make_sample_dataset.py ROOT --per_class 20 --hostile
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from shardgen.cpus import usable_cpus  # noqa: E402

DATASET = "COVID-19_Radiography_Dataset"
FULL_COUNTS = {"COVID": 3616, "Lung_Opacity": 6012, "Normal": 10192, "Viral Pneumonia": 1345}
SIZE = 299


def xray(seed: int, cls_index: int = 0, size: int = SIZE) -> np.ndarray:
    """A deterministic fake chest X-ray, ``size`` x ``size`` uint8."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.75 - 0.25 * ((x - 0.5) ** 2 + (y - 0.45) ** 2) * 4
    for cx in (0.32 + r.uniform(-0.03, 0.03), 0.68 + r.uniform(-0.03, 0.03)):
        lung = np.exp(-(((x - cx) / 0.15) ** 2 + ((y - 0.5) / 0.28) ** 2) ** 2)
        img -= (0.45 - 0.08 * cls_index) * lung
    ribs = 0.06 * np.sin(y * r.uniform(38, 46) + np.abs(x - 0.5) * 6) * (np.abs(x - 0.5) > 0.05)
    img += ribs
    for _ in range(1 + cls_index * 2):
        bx, by, s = r.uniform(0.2, 0.8), r.uniform(0.25, 0.8), r.uniform(0.03, 0.1)
        img += r.uniform(0.05, 0.2) * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / s**2)
    img += r.normal(0, 0.012, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _png(a: np.ndarray, mode: str | None = None) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a, mode).save(b, "PNG")
    return b.getvalue()


def add_hostile(base: str) -> dict[str, str]:
    """Add hostile and unusual files; returns {relative path: what it is}."""
    made: dict[str, str] = {}

    def put(rel: str, data: bytes, what: str) -> None:
        p = os.path.join(base, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        made[rel] = what

    good = _png(xray(99, 0))
    put("COVID/images/zero-byte.png", b"", "zero-byte")
    put("COVID/images/truncated.png", good[: len(good) // 2], "truncated")
    put("Normal/images/not-an-image.png", b"this is a text file, not a PNG\n" * 10, "non-image")
    # A valid PNG header claiming 20000x20000 pixels: a decompression bomb.
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")
    put("Lung_Opacity/images/bomb.png", bomb.getvalue(), "decompression-bomb")
    os.symlink("/nonexistent/shardgen-missing.png", os.path.join(base, "Normal/images/dangling.png"))
    made["Normal/images/dangling.png"] = "unreadable"
    # Unusual but valid images.
    a16 = (xray(7, 1).astype(np.uint16) * 16)  # 12-bit data in a 16-bit PNG
    put("COVID/images/sixteen-bit.png", _png(a16), "16-bit")
    rgba = np.dstack([xray(8, 2)] * 3 + [np.full((SIZE, SIZE), 255, np.uint8)])
    put("Normal/images/rgba.png", _png(rgba, "RGBA"), "rgba")
    pal = Image.fromarray(xray(9, 1)).convert("P")
    b = io.BytesIO(); pal.save(b, "PNG"); put("Lung_Opacity/images/palette.png", b.getvalue(), "palette")
    color = np.dstack([xray(10, 3), xray(11, 3), xray(12, 3)])
    put("Viral Pneumonia/images/true-color.png", _png(color), "true-colour")
    wide = np.asarray(Image.fromarray(xray(13, 0)).resize((400, 200)))
    put("COVID/images/wide.png", _png(wide), "non-square")
    cmyk = Image.fromarray(xray(14, 2)).convert("CMYK")
    b = io.BytesIO(); cmyk.save(b, "JPEG", quality=95); put("Normal/images/cmyk.jpg", b.getvalue(), "cmyk-jpeg")
    ex = Image.fromarray(np.asarray(Image.fromarray(xray(15, 0)).resize((300, 200))))
    exif = Image.Exif(); exif[0x0112] = 6
    b = io.BytesIO(); ex.save(b, "JPEG", exif=exif.tobytes(), quality=95); put("COVID/images/exif-rotated.jpg", b.getvalue(), "exif-rotated")
    dup = _png(xray(16, 1))
    put("Lung_Opacity/images/dup-a.png", dup, "duplicate")
    put("Lung_Opacity/images/dup-b.png", dup, "duplicate")
    conflict = _png(xray(17, 2))
    put("Normal/images/conflict.png", conflict, "label-conflict")
    put("COVID/images/conflict.png", conflict, "label-conflict")
    put("COVID/images/notes.txt", b"not an image\n", "non-image extension")
    return made


def make_dataset(root: str, counts: dict[str, int], seed: int = 0, hostile: bool = False, workers: int | None = None) -> str:
    """Create the dataset under ``root``; returns the dataset folder."""
    base = os.path.join(root, DATASET)
    os.makedirs(base, exist_ok=True)
    classes = sorted(counts)
    workers = workers or usable_cpus()
    jobs = []
    for ci, cls in enumerate(classes):
        n = counts[cls]
        step = max(1, n // workers // 2) if n > 500 else n
        start = 0
        while start < n:
            jobs.append((base, cls, ci, min(step, n - start), seed, start))
            start += step
    with ProcessPoolExecutor(max_workers=workers) as ex:
        list(ex.map(_write_range, jobs))
    for cls in classes:
        with open(os.path.join(base, f"{cls}.metadata.xlsx"), "wb") as f:
            f.write(b"PK\x03\x04 not really a spreadsheet")
    with open(os.path.join(base, "README.md.txt"), "w") as f:
        f.write("COVID-19 Radiography Database (synthetic sample made by shardgen's tools/make_sample_dataset.py)\n")
    if hostile:
        add_hostile(base)
    return base


def _write_range(job) -> int:
    base, cls, ci, n, seed, start = job
    img_dir = os.path.join(base, cls, "images")
    mask_dir = os.path.join(base, cls, "masks")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(mask_dir, exist_ok=True)
    for i in range(start + 1, start + n + 1):
        a = xray(seed * 1_000_003 + ci * 100_000 + i, ci)
        name = f"{cls}-{i}.png"
        data = _png(np.stack([a, a, a], -1)) if (cls == "Viral Pneumonia" and i % 10 == 0) else _png(a)
        with open(os.path.join(img_dir, name), "wb") as f:
            f.write(data)
        with open(os.path.join(mask_dir, name), "wb") as f:
            f.write(_png(((a < 90) * 255).astype(np.uint8)))
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--per_class", type=int, default=None, help="images per class (default 60)")
    g.add_argument("--full", action="store_true", help="the real class sizes: 21,165 images")
    p.add_argument("--fraction", type=float, default=1.0, help="with --full: this share of each class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--hostile", action="store_true", help="also add broken and unusual files")
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    if a.full:
        counts = {k: max(1, round(v * a.fraction)) for k, v in FULL_COUNTS.items()}
    else:
        counts = {k: a.per_class or 60 for k in FULL_COUNTS}
    base = make_dataset(a.root, counts, a.seed, a.hostile, a.workers)
    print(f"wrote {sum(counts.values())} images in {len(counts)} classes under {base}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
