#!/usr/bin/env python3
"""Stress test: is ``shardgen build`` byte-identical whatever happens to it? (issue 15)

Three parts, each compared byte for byte with one uninterrupted reference build:

  kill     N cycles: start a build, SIGKILL it (the whole process group) at a random point,
           run the same command again to resume, compare every output file. Half the
           kills come once a random number of conversion chunks are complete, half after
           a random delay (which also lands in shard writing and the manifest). A build
           that finished before its kill is compared too, but does not count towards N.
  history  builds under other process histories: --workers 1, 2 and 3; the same files
           copied in reverse order into a second source folder; a build whose process
           first filled and freed its heap with random bytes and encoded other images.
  heap     the same images encoded in many fresh processes, each with a different heap
           history (random-size buffers of random bytes allocated and freed, other images
           encoded first, glibc MALLOC_PERTURB_), against the encoding in this process.

Usage:
    python tools/stress_determinism.py --images 2000 --cycles 100
    python tools/stress_determinism.py --images 21165 --cycles 20 --parts kill
Prints one line per part and a summary; exits 1 on the first difference, naming the file.
Not part of ``make test`` (tests/test_determinism.py is the quick version).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tools"))

import make_sample_dataset as msd  # noqa: E402

__all__ = ["compare_trees", "run_build", "kill_build", "heap_child_digests", "main"]

CHUNK_DIR = os.path.join(".shardgen-work", "chunks")


class Different(Exception):
    """Two builds differ; the message names the first differing file."""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _files(root: str) -> list[str]:
    out = []
    for d, _dirs, files in os.walk(root):
        out += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(out)


def compare_trees(ref: str, out: str) -> str | None:
    """None when ``out`` holds exactly ``ref``'s files with the same bytes, else the first difference."""
    a, b = _files(ref), _files(out)
    if a != b:
        extra, missing = sorted(set(b) - set(a)), sorted(set(a) - set(b))
        return f"extra file {extra[0]}" if extra else f"missing file {missing[0]}"
    for rel in a:
        if not filecmp.cmp(os.path.join(ref, rel), os.path.join(out, rel), shallow=False):
            return f"{rel} differs"
    return None


def build_cmd(src: str, out: str, workers: int, size: int, shard_size: int) -> list[str]:
    return [sys.executable, "-m", "shardgen", "build", src, out, "--size", str(size), "--shard_size",
            str(shard_size), "--workers", str(workers), "--progress", "false"]


def run_build(cmd: list[str], prelude: str | None = None) -> float:
    """Run a build to completion; returns seconds. ``prelude``: Python run in the process first."""
    if prelude is not None:
        code = f"{prelude}\nimport sys\nfrom shardgen.__main__ import main\nsys.exit(main({cmd[3:]!r}))"
        cmd = [sys.executable, "-c", code]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    if p.returncode != 0:
        raise SystemExit(f"build failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return time.perf_counter() - t0


def kill_build(cmd: list[str], out: str, after_chunks: int | None = None, after_s: float | None = None) -> bool:
    """Start a build and SIGKILL its process group once ``after_chunks`` chunks are converted
    or ``after_s`` seconds have passed; returns False when it finished first."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(),
                         start_new_session=True)
    t0 = time.monotonic()
    chunks = os.path.join(out, CHUNK_DIR)
    while p.poll() is None:
        if after_s is not None and time.monotonic() - t0 >= after_s:
            break
        if after_chunks is not None:
            try:
                if sum(f.endswith(".json") for f in os.listdir(chunks)) >= after_chunks:
                    break
            except OSError:
                pass
        time.sleep(0.005)
    killed = p.poll() is None
    if killed:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    return killed


HEAP_PRELUDE = """
import os, random
import numpy as np
from shardgen.imaging.image import encode_png
_r = random.Random({seed})
_keep = []
for _ in range(_r.randint(50, 400)):
    _keep.append(os.urandom(_r.choice([16, 200, 700, 4000, 33000, 66000, 70000, 140000, 300000])))
    if len(_keep) > 30:
        del _keep[:_r.randint(1, 30)]
for _ in range(_r.randint(1, 20)):
    encode_png(np.random.default_rng(_r.randrange(1 << 30)).integers(0, 256, (_r.randint(8, 300),) * 2, np.uint8))
del _keep[:_r.randint(0, len(_keep))]
"""


def sample_arrays(n: int, size: int) -> list:
    """``n`` converted 8-bit images like a build's (fake chest X-rays fitted to ``size``)."""
    from shardgen.imaging.image import fit_square

    return [fit_square(msd.xray(7_000 + i, i % 4), size, "pad") for i in range(n)]


def heap_child_digests(seed: int, n: int, size: int) -> list[str]:
    """Encode :func:`sample_arrays` after polluting this process's heap; xxh64 of each PNG."""
    import xxhash

    exec(HEAP_PRELUDE.format(seed=seed), {})
    from shardgen.imaging.image import encode_png

    arrays = sample_arrays(n, size)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = [""] * n
    for i in order:
        out[i] = xxhash.xxh64_hexdigest(encode_png(arrays[i]))
    return out


@dataclass
class Part:
    name: str
    runs: int
    seconds: float
    note: str = ""


def part_heap(processes: int, n: int, size: int, seed: int) -> Part:
    t0 = time.perf_counter()
    ref = heap_child_digests(seed, n, size)
    for k in range(processes):
        env = _env()
        if k % 2:
            env["MALLOC_PERTURB_"] = str(1 + (seed + k) % 255)
        code = (f"import json, sys; sys.path.insert(0, {os.path.join(ROOT, 'tools')!r}); "
                f"import stress_determinism as s; print(json.dumps(s.heap_child_digests({seed + 1 + k}, {n}, {size})))")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        got = json.loads(p.stdout)
        for i, (a, b) in enumerate(zip(ref, got)):
            if a != b:
                raise Different(f"heap: image {i} encodes differently in process {k} (seed {seed + 1 + k})")
    return Part("heap", processes, time.perf_counter() - t0, f"{n} images each")


def part_history(src: str, ref: str, work: str, a, rng: random.Random) -> Part:
    t0 = time.perf_counter()
    runs = 0
    out = os.path.join(work, "history")
    rev = os.path.join(work, "src-reversed", msd.DATASET)
    shutil.rmtree(os.path.dirname(rev), ignore_errors=True)
    for rel in reversed(_files(src)):  # same files, created in the opposite order
        os.makedirs(os.path.dirname(os.path.join(rev, rel)), exist_ok=True)
        shutil.copyfile(os.path.join(src, rel), os.path.join(rev, rel))
    cases = [(f"--workers {w}", src, w, None) for w in (1, 2, 3)]
    cases += [("reversed listing", rev, a.workers, None),
              ("polluted heap", src, a.workers, HEAP_PRELUDE.format(seed=rng.randrange(1 << 30)))]
    for what, s, w, prelude in cases:
        shutil.rmtree(out, ignore_errors=True)
        run_build(build_cmd(s, out, w, a.size, a.shard_size), prelude)
        runs += 1
        diff = compare_trees(ref, out)
        if diff:
            raise Different(f"history ({what}): {diff}")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(os.path.dirname(rev), ignore_errors=True)
    return Part("history", runs, time.perf_counter() - t0, "workers 1/2/3, reversed listing, polluted heap")


def part_kill(src: str, ref: str, work: str, a, rng: random.Random, n_chunks: int, t_ref: float) -> Part:
    t0 = time.perf_counter()
    out = os.path.join(work, "killed")
    cmd = build_cmd(src, out, a.workers, a.size, a.shard_size)
    killed = attempts = 0
    while killed < a.cycles:  # a build that finished before its kill is compared but not counted
        attempts += 1
        shutil.rmtree(out, ignore_errors=True)
        if rng.random() < 0.5:
            point = {"after_chunks": rng.randint(1, n_chunks)}
        else:
            point = {"after_s": rng.uniform(0.05, 1.0) * t_ref}
        hit = kill_build(cmd, out, **point)
        killed += hit
        run_build(cmd)
        diff = compare_trees(ref, out)
        if diff:
            raise Different(f"kill cycle {attempts} (killed {point}): {diff}")
        if a.verbose:
            what = "killed" if hit else "finished before the kill"
            print(f"  cycle {attempts}: {what} {point}, identical", file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return Part("kill", killed, time.perf_counter() - t0, f"{attempts - killed} more finished before the kill")


def dataset(root: str, images: int) -> tuple[str, int]:
    total = sum(msd.FULL_COUNTS.values())
    counts = {k: max(1, round(v * images / total)) for k, v in msd.FULL_COUNTS.items()}
    n = sum(counts.values())
    data = os.path.join(root, f"data-{n}")
    if not os.path.exists(os.path.join(data, ".complete")):
        shutil.rmtree(data, ignore_errors=True)
        print(f"generating {n} images in {data} ...", file=sys.stderr, flush=True)
        msd.make_dataset(data, counts, seed=0)
        open(os.path.join(data, ".complete"), "w").close()
    return os.path.join(data, msd.DATASET), n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.join(ROOT, "stress-out"), help="work folder (kept for the data)")
    ap.add_argument("--images", type=int, default=2000, help="dataset size, COVID-19 class ratios (default 2000)")
    ap.add_argument("--cycles", type=int, default=100, help="kill/resume cycles (default 100)")
    ap.add_argument("--processes", type=int, default=20, help="fresh processes for the heap part (default 20)")
    ap.add_argument("--heap_images", type=int, default=200, help="images each heap process encodes (default 200)")
    ap.add_argument("--parts", default="heap,history,kill", help="comma-separated: heap, history, kill")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--shard_size", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill points and heap histories")
    ap.add_argument("--verbose", action="store_true", help="one line per kill cycle")
    a = ap.parse_args(argv)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in ("heap", "history", "kill")]
    if bad:
        ap.error(f"unknown part {bad[0]!r}")
    from shardgen.build.run import CHUNK
    from shardgen.imaging.image import encoder_info

    rng = random.Random(a.seed)
    t_all = time.perf_counter()
    done: list[Part] = []
    print(f"encoder: {json.dumps(encoder_info())}")
    try:
        if "heap" in parts:
            done.append(part_heap(a.processes, a.heap_images, a.size, a.seed))
            print(f"heap:    {done[-1].runs} processes, {done[-1].seconds:.0f} s, identical", flush=True)
        if "history" in parts or "kill" in parts:
            src, n = dataset(a.root, a.images)
            ref = os.path.join(a.root, f"ref-{n}")
            shutil.rmtree(ref, ignore_errors=True)
            t_ref = run_build(build_cmd(src, ref, a.workers, a.size, a.shard_size))
            print(f"reference build: {n} images, {t_ref:.1f} s", flush=True)
            if "history" in parts:
                done.append(part_history(src, ref, a.root, a, rng))
                print(f"history: {done[-1].runs} builds, {done[-1].seconds:.0f} s, identical", flush=True)
            if "kill" in parts:
                done.append(part_kill(src, ref, a.root, a, rng, -(-n // CHUNK), t_ref))
                print(f"kill:    {done[-1].runs} cycles ({done[-1].note}), {done[-1].seconds:.0f} s, identical",
                      flush=True)
    except Different as e:
        print(f"FAIL after {time.perf_counter() - t_all:.0f} s: {e}")
        return 1
    summary = {p.name: {"runs": p.runs, "seconds": round(p.seconds, 1), "note": p.note} for p in done}
    print(f"PASS: all byte-identical in {time.perf_counter() - t_all:.0f} s: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
