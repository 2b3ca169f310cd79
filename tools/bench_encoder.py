#!/usr/bin/env python3
"""Compare deflate back ends for shardgen's PNG encoder, side by side in one run (issue 15).

    python tools/bench_encoder.py                 # encode only, 300 images
    python tools/bench_encoder.py --build 2000    # also a 2,000-image build with each encoder

Encode only: the Average-filtered rows of ``--images`` converted 256x256 fake chest X-rays,
compressed by each candidate; best of ``--rounds`` interleaved rounds, in ms/image and
PNG bytes/image, with ratios against ISA-L level 1 (shardgen's encoder before issue 15) and
zlib level 6. "Pillow PNG" is Pillow's own encoder at its default (zlib 6, adaptive filter).
Build: ``shardgen build --workers 2`` of a generated set with libdeflate (shipped) and with
ISA-L level 1 patched in, alternating (and alternating which goes first), best of
``--build_rounds``, with wall time and the CPU time of the build and its workers. ISA-L candidates need
``pip install isal`` (no longer a dependency).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import sys
import time
import zlib

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import deflate  # noqa: E402

import stress_determinism as stress  # noqa: E402

ISAL_PRELUDE = """
import deflate
from isal import isal_zlib
deflate.zlib_compress = lambda data, level: isal_zlib.compress(bytes(data), 1)
"""


#: Bytes of a shardgen PNG around its zlib stream: signature, IHDR, IDAT header and CRC, IEND.
PNG_OVERHEAD = 8 + 25 + 12 + 12


def filtered_rows(a: np.ndarray) -> bytes:
    """The exact bytes shardgen deflates: filter byte 3 + Average residuals per row."""
    from shardgen.imaging.image import encode_png

    png = encode_png(a)
    return zlib.decompress(png[8 + 25 + 8:-16])


def candidates() -> dict:
    c = {}
    try:
        from isal import isal_zlib

        c["ISA-L L1 (before)"] = lambda b: isal_zlib.compress(b, 1)
    except ImportError:
        pass
    for lvl in (1, 2, 3, 4, 6):
        c[f"libdeflate L{lvl}"] = (lambda lvl: lambda b: bytes(deflate.zlib_compress(b, lvl)))(lvl)
    c["zlib L1"] = lambda b: zlib.compress(b, 1)
    c["zlib L6"] = lambda b: zlib.compress(b, 6)
    return c


def encode_only(n: int, rounds: int) -> dict:
    arrays = stress.sample_arrays(n, 256)
    rows = [filtered_rows(a) for a in arrays]
    cands = candidates()

    def pillow(a):
        b = io.BytesIO()
        Image.fromarray(a, "L").save(b, "PNG")
        return b.getvalue()

    best = {k: float("inf") for k in cands}
    best["Pillow PNG (default)"] = float("inf")
    size = {}
    for _ in range(rounds):  # interleaved, so that load from other processes hits all alike
        for name, f in cands.items():
            t0 = time.perf_counter()
            out = [f(b) for b in rows]
            best[name] = min(best[name], time.perf_counter() - t0)
            size[name] = sum(map(len, out)) + n * PNG_OVERHEAD
        t0 = time.perf_counter()
        out = [pillow(a) for a in arrays]
        best["Pillow PNG (default)"] = min(best["Pillow PNG (default)"], time.perf_counter() - t0)
        size["Pillow PNG (default)"] = sum(map(len, out))
    base_isal = size.get("ISA-L L1 (before)")
    return {k: {"ms_per_image": round(best[k] / n * 1e3, 3), "bytes_per_image": round(size[k] / n),
                "vs_isal_l1": round(size[k] / base_isal, 3) if base_isal else None,
                "vs_zlib_l6": round(size[k] / size["zlib L6"], 3),
                "vs_pillow": round(size[k] / size["Pillow PNG (default)"], 3)} for k in best}


def builds(n_images: int, rounds: int, root: str) -> dict:
    src, n = stress.dataset(root, n_images)
    out = os.path.join(root, "bench-encoder-out")
    res: dict[str, dict] = {}
    for _ in range(rounds):
        order = (("libdeflate L1", None), ("ISA-L L1 (before)", ISAL_PRELUDE))
        for name, prelude in order if _ % 2 == 0 else order[::-1]:
            shutil.rmtree(out, ignore_errors=True)
            ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = stress.run_build(stress.build_cmd(src, out, 2, 256, 1000), prelude)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = ru1.ru_utime - ru0.ru_utime + ru1.ru_stime - ru0.ru_stime
            with open(os.path.join(out, "manifest.json")) as f:
                m = json.load(f)
            nbytes = sum(sh["bytes"] for s in m["splits"].values() for sh in s["shards"])
            r = res.setdefault(name, {"seconds": t, "cpu_seconds": cpu, "shard_bytes": nbytes})
            r["seconds"], r["cpu_seconds"] = min(r["seconds"], t), min(r["cpu_seconds"], cpu)
    shutil.rmtree(out, ignore_errors=True)
    for r in res.values():
        r["images_per_s"] = round(n / r["seconds"], 1)
        r["seconds"] = round(r["seconds"], 2)
        r["cpu_ms_per_image"] = round(r.pop("cpu_seconds") / n * 1e3, 3)
    return {"images": n, **res}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--build", type=int, default=0, help="also time builds of this many images (default: no)")
    ap.add_argument("--build_rounds", type=int, default=3)
    ap.add_argument("--root", default=os.path.join(ROOT, "stress-out"))
    a = ap.parse_args(argv)
    enc = encode_only(a.images, a.rounds)
    print(f"encode only, {a.images} images 256x256 (best of {a.rounds}):")
    for k, v in enc.items():
        vs = f"x{v['vs_isal_l1']:.3f} vs ISA-L L1, " if v["vs_isal_l1"] else ""
        print(f"  {k:22s} {v['ms_per_image']:7.3f} ms/image {v['bytes_per_image']:8d} B/image  {vs}"
              f"x{v['vs_zlib_l6']:.3f} vs zlib L6, x{v['vs_pillow']:.3f} vs Pillow PNG")
    result = {"encode": enc}
    if a.build and "ISA-L L1 (before)" in enc:
        result["build"] = b = builds(a.build, a.build_rounds, a.root)
        print(f"build, {b['images']} images, --workers 2 (best of {a.build_rounds}):")
        for k, v in b.items():
            if isinstance(v, dict):
                print(f"  {k:22s} {v['images_per_s']:7.1f} images/s ({v['seconds']} s), "
                      f"CPU {v['cpu_ms_per_image']} ms/image (all processes), shards {v['shard_bytes']:,} B")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
