"""Large JPEG sources (MIMIC-CXR-JPG's ~2,500 x 3,000): the per-core conversion rate with libjpeg's
DCT scaling (``jpeg_draft``, the default) against the exact full decode, and how far apart
their output pixels are.

    python tools/bench_jpeg.py --images 40 --width 2500 --height 3000 --size 256

Prints one JSON object: images per second on one core for each mode, their ratio, and the
mean and largest absolute difference of the output pixels (grey levels).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from shardgen.imaging.image import ImageOptions, process_bytes  # noqa: E402


def radiograph(seed: int, width: int, height: int) -> bytes:
    """A chest-X-ray-like JPEG: smooth anatomy-scale structure, fine noise, quality 90."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = 120 + 60 * np.sin(x / (width / 7) + seed) * np.cos(y / (height / 5))
    img += 40 * np.exp(-(((x - width * 0.35) / (width * 0.12)) ** 2 + ((y - height * 0.5) / (height * 0.3)) ** 2))
    img += 40 * np.exp(-(((x - width * 0.65) / (width * 0.12)) ** 2 + ((y - height * 0.5) / (height * 0.3)) ** 2))
    img += rng.normal(0, 6, img.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)


def run(images: int, width: int, height: int, size: int, rounds: int) -> dict:
    data = [radiograph(i, width, height) for i in range(images)]
    modes = {"draft": ImageOptions(size=size, jpeg_draft=True), "full": ImageOptions(size=size, jpeg_draft=False)}
    best = {m: float("inf") for m in modes}
    outs: dict[str, list[bytes]] = {}
    for _ in range(rounds):
        for m, opts in modes.items():  # side by side in each round
            t = time.process_time()
            outs[m] = [process_bytes(d, opts, name="x.jpg").png for d in data]
            best[m] = min(best[m], time.process_time() - t)
    diffs = [np.abs(pixels(a) - pixels(b)) for a, b in zip(outs["draft"], outs["full"])]
    rate = {m: images / best[m] for m in modes}
    return {"images": images, "source": f"{width}x{height}", "size": size, "rounds": rounds,
            "per_core_images_per_s": {m: round(r, 1) for m, r in rate.items()},
            "ms_per_image": {m: round(1000 / r, 2) for m, r in rate.items()},
            "speedup": round(rate["draft"] / rate["full"], 2),
            "mean_abs_diff": round(float(np.mean([d.mean() for d in diffs])), 3),
            "max_abs_diff": int(max(d.max() for d in diffs))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--width", type=int, default=2500)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args(argv)
    print(json.dumps(run(a.images, a.width, a.height, a.size, a.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
