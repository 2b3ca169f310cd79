#!/usr/bin/env python3
"""A killed build's resume as a share of a full build, over several rounds (issue 13).

Each round, on the same generated images (COVID-19 class ratios, 299x299 PNG):
  1. a full build, timed;
  2. a build SIGKILLed (its whole process group) once ``--kill_at`` of its conversion
     chunks are complete;
  3. the same command again: the resume, timed, and compared byte for byte with 1.
The full build and its resume run back to back in each round, so both see about the same
machine; the spread of the ratios over the rounds is what the noise does to them.

    python tools/bench_build_resume.py --fraction 0.1 --rounds 5
    python tools/bench_build_resume.py --fraction 0.25 --kill_at 0.8 --cold
    python tools/bench_build_resume.py --compare /path/to/other/checkout   # before/after in the same rounds

``--cold`` drops the sources and the build folder from the page cache before each timed
run (``posix_fadvise(DONTNEED)`` on these files only), as on a machine that reclaimed it.
``--compare`` also measures the shardgen of another checkout in every round, in
alternating order. Prints one line per round and a summary, then one JSON line.

A resume cannot cost less than the work the killed build had not done: converting the
other ``1 - kill_at`` of the images, assembling every shard (none exist before every image
is converted) and the fixed costs (start-up, scan, plan, manifest). The summary shows
that floor next to the ratio: the share of chunks the resume converted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

import make_sample_dataset as msd  # noqa: E402
from bench_build import kill_after_chunks  # noqa: E402

CHUNK = 64  # shardgen.build.convert.CHUNK: files per conversion chunk
_RESUMED = re.compile(r"reused (\d+)/(\d+) chunks")
_REHASHED = re.compile(r"re-hashed (\d+) sources?")


def dataset(root: str, fraction: float) -> tuple[str, int]:
    """The generated source folder (made once, kept under ``root``) and its image count."""
    counts = {k: max(1, round(v * fraction)) for k, v in msd.FULL_COUNTS.items()}
    n = sum(counts.values())
    data_root = os.path.join(root, f"data-{n}")
    if not os.path.exists(os.path.join(data_root, ".complete")):
        shutil.rmtree(data_root, ignore_errors=True)
        print(f"generating {n} images in {data_root} ...", file=sys.stderr)
        msd.make_dataset(data_root, counts, seed=0)
        open(os.path.join(data_root, ".complete"), "w").close()
    return os.path.join(data_root, msd.DATASET), n


def evict(*folders: str) -> None:
    """Drop these files from the page cache (``POSIX_FADV_DONTNEED``; dirty pages are written first)."""
    for folder in folders:
        for d, _, files in os.walk(folder):
            for f in files:
                try:
                    fd = os.open(os.path.join(d, f), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                finally:
                    os.close(fd)


def run(code: str, src: str, out: str, workers: int | None, kill_chunks: int | None = None):
    """Run ``shardgen build`` of checkout ``code``; returns (wall s, CPU s of it and its workers, stdout)."""
    cmd = [sys.executable, "-m", "shardgen", "build", src, out, "--progress", "false"]
    cmd += ["--workers", str(workers)] if workers else []
    env = dict(os.environ, PYTHONPATH=code + os.pathsep + os.environ.get("PYTHONPATH", ""))
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         start_new_session=True)
    if kill_chunks is not None:
        kill_after_chunks(p, out, kill_chunks)
    stdout, stderr = p.communicate()
    wall = time.perf_counter() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if kill_chunks is None and p.returncode != 0:
        raise SystemExit(f"build failed ({p.returncode}):\n{stderr}")
    return wall, (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), stdout


def identical(a: str, b: str) -> bool:
    """Every file of build ``a`` equals build ``b``'s (same names, same bytes)."""
    def files(root):
        return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
    fa = files(a)
    if fa != files(b):
        return False
    for rel in fa:
        with open(os.path.join(a, rel), "rb") as x, open(os.path.join(b, rel), "rb") as y:
            if x.read() != y.read():
                return False
    return True


def one_round(code: str, src: str, root: str, n: int, a) -> dict:
    """Full build, killed build, resume of ``code``'s shardgen; returns the round's figures."""
    full, res = os.path.join(root, "out-full"), os.path.join(root, "out-resume")
    for d in (full, res):
        shutil.rmtree(d, ignore_errors=True)
    if a.cold:
        evict(src)
    t_full, cpu_full, _ = run(code, src, full, a.workers)
    kill_chunks = max(1, int(a.kill_at * -(-n // CHUNK)))
    run(code, src, res, a.workers, kill_chunks)
    if a.cold:
        evict(src, res)
    t_res, cpu_res, stdout = run(code, src, res, a.workers)
    m, h = _RESUMED.search(stdout), _REHASHED.search(stdout)
    reused, total = (int(m.group(1)), int(m.group(2))) if m else (0, 1)
    return {"full_s": round(t_full, 2), "resume_s": round(t_res, 2), "ratio": round(t_res / t_full, 4),
            "cpu_ratio": round(cpu_res / cpu_full, 4), "converted_share": round(1 - reused / total, 4),
            "rehashed_sources": int(h.group(1)) if h else None, "identical": identical(full, res)}


def summary(rounds: list[dict]) -> dict:
    r = [x["ratio"] for x in rounds]
    c = [x["cpu_ratio"] for x in rounds]
    return {"ratio_min": min(r), "ratio_median": round(statistics.median(r), 4), "ratio_max": max(r),
            "cpu_ratio_median": round(statistics.median(c), 4), "cpu_ratio_max": max(c),
            "converted_share_median": statistics.median(x["converted_share"] for x in rounds),
            "all_identical": all(x["identical"] for x in rounds)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(ROOT, "bench-out"), help="data and build folders")
    ap.add_argument("--fraction", type=float, default=0.1, help="share of the 21,165-image set (default 0.1)")
    ap.add_argument("--kill_at", type=float, default=0.8, help="share of chunks converted at the kill (default 0.8)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--cold", action="store_true", help="sources and OUT out of the page cache before timed runs")
    ap.add_argument("--compare", default=None, help="another checkout whose shardgen is measured too")
    a = ap.parse_args(argv)
    src, n = dataset(a.root, a.fraction)
    codes = {"this": ROOT} | ({"compare": os.path.abspath(a.compare)} if a.compare else {})
    results: dict[str, list[dict]] = {k: [] for k in codes}
    for i in range(a.rounds):
        order = list(codes) if i % 2 == 0 else list(codes)[::-1]
        for name in order:
            r = one_round(codes[name], src, a.root, n, a)
            results[name].append(r)
            print(f"round {i + 1} {name:7s} full {r['full_s']:6.2f} s  resume {r['resume_s']:5.2f} s = "
                  f"{r['ratio']:6.1%} (CPU {r['cpu_ratio']:6.1%}; converted {r['converted_share']:.1%} of chunks, "
                  f"re-hashed {r['rehashed_sources']} sources)  identical: {r['identical']}", flush=True)
    out = {"images": n, "kill_at": a.kill_at, "cold": a.cold, "rounds": a.rounds}
    for name, rs in results.items():
        s = summary(rs)
        print(f"{name}: resume / full build = {s['ratio_median']:.1%} median, {s['ratio_min']:.1%} to "
              f"{s['ratio_max']:.1%} over {len(rs)} rounds (CPU time: {s['cpu_ratio_median']:.1%} median); "
              f"the resume converted {s['converted_share_median']:.1%} of the chunks; "
              f"byte-identical: {s['all_identical']}")
        out[name] = {"summary": s, "rounds": rs}
    for d in ("out-full", "out-resume"):
        shutil.rmtree(os.path.join(a.root, d), ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
