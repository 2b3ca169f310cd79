"""``shardgen build``: labelled images -> deterministic, checksummed WebDataset shards.

Two phases, both resumable:

1. **Convert.** The sorted file list is cut into chunks of :data:`CHUNK` files. Worker
   processes decode, convert and encode each chunk and write it to the scratch folder
   ``OUT/.shardgen-work/chunks`` (``c-NNNNNN.bin`` with the PNGs, then ``c-NNNNNN.json``
   with one record per file, each renamed into place when complete). A chunk whose
   record file exists and whose source files still hash the same is reused.
2. **Assemble.** With every image's pixel hash known, splits are assigned (duplicates and
   groups kept together), each split is shuffled with the seed and cut into shards; each
   shard is written under a temporary name and renamed. A shard already on disk whose
   plan fingerprint and checksum match is kept. Then ``classes.json``, the
   ``dataset.json`` files, ``skipped.jsonl``, ``duplicates.jsonl`` and, last,
   ``manifest.json``; finally the scratch folder is removed.

Memory stays proportional to the file list: images live on disk between the phases.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import xxhash

from . import __version__
from .errors import ShardgenError, UsageError
from .format import (CLASSES, DATASET_JSON, DUPLICATES, FORMAT, MANIFEST, SKIPPED, SPLIT_RE, WORK_DIR,
                     atomic_write_bytes, atomic_write_json, dump_json, shard_relpath)
from .image import DEFAULT_MAX_PIXELS, FITS, ImageSkip, encoder_info, process_file
from .scan import Item, Skip, scan
from .split import assign_splits, shuffle_order
from .writer import ShardWriter, file_xxh64

__all__ = ["BuildConfig", "BuildResult", "BuildInterrupted", "build", "parse_splits", "CHUNK"]

#: Files per conversion chunk (the unit of parallel work and of resume).
CHUNK = 64
FORMATS = ("png",)
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


class BuildInterrupted(ShardgenError):
    """SIGINT/SIGTERM: the build stopped and can be resumed."""

    def __init__(self, msg: str, signum: int) -> None:
        super().__init__(msg)
        self.exit_code = 128 + signum


def parse_splits(spec: str) -> tuple[tuple[str, float], ...]:
    """Parse ``train=0.8,test=0.2`` into ``(("train", 0.8), ("test", 0.2))``.

    Raises:
        UsageError: malformed, duplicate or bad names, ratios outside (0, 1], or a sum other than 1.
    """
    out: list[tuple[str, float]] = []
    for part in str(spec).split(","):
        name, sep, val = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--splits: expected name=ratio pairs like train=0.8,test=0.2; got {spec!r}")
        if not SPLIT_RE.match(name):
            raise UsageError(f"--splits: split name {name!r} may only use letters, digits, _ and -")
        try:
            r = float(val)
        except ValueError:
            raise UsageError(f"--splits: ratio of {name!r} is not a number: {val!r}") from None
        if not 0 < r <= 1:
            raise UsageError(f"--splits: ratio of {name!r} must be in (0, 1], got {r}")
        if name in dict(out):
            raise UsageError(f"--splits: split {name!r} given twice")
        out.append((name, r))
    total = sum(r for _, r in out)
    if abs(total - 1.0) > 1e-6:
        raise UsageError(f"--splits: ratios must sum to 1, got {total:g} ({spec})")
    return tuple(out)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a build's output (plus ``workers``, which never changes it).

    Attributes:
        src: source folder.
        out: output folder.
        size: output image side in pixels (default 256).
        splits: ``name=ratio,...`` (default ``train=0.8,test=0.2``; must be None for pre-split sources).
        seed: seed of split assignment and shuffling (default 0).
        shard_size: samples per shard at most (default 1000).
        workers: worker processes (default: all usable cores).
        classes: class order (default: sorted names); a subset builds only those classes.
        fit: ``pad`` | ``crop`` | ``stretch`` for non-square inputs (default ``pad``).
        format: image format in the shards (``png``).
        index: optional CSV ``path,label[,group][,split]``.
        group: optional regex giving a group id from each relative path.
        max_pixels: inputs with more pixels are skipped as decompression bombs (default 89,478,485).
    """

    src: str
    out: str
    size: int = 256
    splits: str | None = None
    seed: int = 0
    shard_size: int = 1000
    workers: int | None = None
    classes: tuple[str, ...] | None = None
    fit: str = "pad"
    format: str = "png"
    index: str | None = None
    group: str | None = None
    max_pixels: int | None = None
    split_ratios: tuple[tuple[str, float], ...] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 8 <= self.size <= 16384:
            raise UsageError(f"--size must be an integer from 8 to 16384, got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise UsageError(f"--shard_size must be a positive integer, got {self.shard_size!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise UsageError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.fit not in FITS:
            raise UsageError(f"--fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.format not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError(f"--max_pixels must be positive, got {self.max_pixels!r}")
        if self.classes is not None:
            cls = tuple(self.classes)
            if len(set(cls)) != len(cls):
                raise UsageError(f"--classes names a class twice: {', '.join(cls)}")
            object.__setattr__(self, "classes", cls)
        if self.splits is not None:
            object.__setattr__(self, "split_ratios", parse_splits(self.splits))
        src_abs, out_abs = os.path.abspath(self.src), os.path.abspath(self.out)
        if out_abs == src_abs or out_abs.startswith(src_abs.rstrip(os.sep) + os.sep):
            raise UsageError(f"OUT {self.out} must not be inside SRC {self.src}")

    @property
    def n_workers(self) -> int:
        if self.workers:
            return self.workers
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1

    @property
    def pixel_limit(self) -> int:
        return self.max_pixels or DEFAULT_MAX_PIXELS


@dataclass
class BuildResult:
    """What a build produced, for the summary."""

    out: str
    manifest: dict[str, Any]
    skipped: list[Skip]
    images: int
    seconds: float
    reused_chunks: int = 0
    total_chunks: int = 0
    kept_shards: int = 0
    total_shards: int = 0


# ----------------------------------------------------------------------------- keys

def make_keys(items: list[Item], layout: str) -> list[str]:
    """Unique sample keys (``[A-Za-z0-9_-]``) derived from the relative paths.

    ``COVID/images/COVID-1.png`` -> ``COVID_COVID-1`` (the Kaggle ``images`` folder is
    dropped). Paths that sanitise to the same key get a hash of the full path appended.
    """
    base = []
    for it in items:
        stem = os.path.splitext(it.relpath)[0]
        parts = stem.split("/")
        if layout == "kaggle" and len(parts) >= 3 and parts[1] == "images":
            parts = [parts[0]] + parts[2:]
        k = _KEY_BAD.sub("_", "_".join(parts)).strip("_") or "img"
        base.append(k[:160])
    count: dict[str, int] = defaultdict(int)
    for k in base:
        count[k] += 1
    keys = [k if count[k] == 1 else f"{k}-{xxhash.xxh32_hexdigest(it.relpath)}" for k, it in zip(base, items)]
    seen: dict[str, int] = defaultdict(int)
    out = []
    for k in keys:
        seen[k] += 1
        out.append(k if seen[k] == 1 else f"{k}-{seen[k]}")
    return out


# ----------------------------------------------------------------------------- OUT state

_OWN_FILES = {MANIFEST, CLASSES, SKIPPED, DUPLICATES, WORK_DIR}


def _is_own_split_dir(path: str, name: str) -> bool:
    """A split folder holding only shardgen files (shards, dataset.json, temporaries)."""
    pat = re.compile(rf"^{re.escape(name)}-\d{{6}}\.tar$")
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    return all(pat.match(e) or e == DATASET_JSON or e.startswith(".tmp-") for e in entries)


def _foreign_entries(out: str) -> list[str]:
    foreign = []
    for e in sorted(os.listdir(out)):
        p = os.path.join(out, e)
        if e in _OWN_FILES or e.startswith(".tmp-"):
            continue
        if os.path.isdir(p) and SPLIT_RE.match(e) and _is_own_split_dir(p, e):
            continue
        foreign.append(e)
    return foreign


def _remove_build(out: str) -> None:
    """Delete the shardgen files in ``out`` (only those; callers checked for foreign files)."""
    for e in os.listdir(out):
        p = os.path.join(out, e)
        if os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def _config_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def _describe(k: str, old: dict, new: dict) -> str:
    return f"{k} (was {json.dumps(old.get(k))}, now {json.dumps(new.get(k))})"


def prepare_out(out: str, fingerprint: dict, overwrite: bool) -> str:
    """Check OUT and decide how to proceed: ``fresh``, ``resume`` or ``rebuild``.

    Raises:
        UsageError: OUT holds foreign files, or a build with another config (without ``overwrite``).
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"OUT {out} exists and is not a folder")
    if not os.path.isdir(out) or not os.listdir(out):
        return "fresh"
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise UsageError(f"OUT {out} holds files that are not a shardgen build ({shown}); use an empty or new folder")
    work = os.path.join(out, WORK_DIR)
    old = None
    where = ""
    wcfg = os.path.join(work, "config.json")
    if os.path.exists(wcfg):
        try:
            with open(wcfg) as f:
                old = json.load(f)
            where = "an interrupted build"
        except (OSError, ValueError):
            old = None
    if old is None and os.path.exists(os.path.join(out, MANIFEST)):
        try:
            with open(os.path.join(out, MANIFEST)) as f:
                old = dict(json.load(f).get("config") or {})
            old["src"] = fingerprint.get("src")  # a finished build does not record where SRC was
            where = "a build"
        except (OSError, ValueError, AttributeError):
            old = None
    if old is None:
        # Only scraps (e.g. killed before the config was written): start over.
        _remove_build(out)
        return "fresh"
    diff = _config_diff(old, fingerprint)
    if diff:
        if overwrite:
            _remove_build(out)
            return "fresh"
        raise UsageError(
            f"OUT {out} holds {where} made with a different config: "
            + "; ".join(_describe(k, old, fingerprint) for k in diff)
            + ". Use --overwrite to replace it"
        )
    if overwrite:
        _remove_build(out)
        return "fresh"
    return "resume" if os.path.isdir(work) else "rebuild"


def _clean_temporaries(out: str) -> None:
    for dirpath, _dirs, files in os.walk(out):
        for f in files:
            if f.startswith(".tmp-"):
                try:
                    os.unlink(os.path.join(dirpath, f))
                except FileNotFoundError:
                    pass


# ----------------------------------------------------------------------------- workers

_REC_STATUS, _REC_REASON, _REC_SRC, _REC_OFF, _REC_LEN, _REC_PIX, _REC_W, _REC_H, _REC_MODE, _REC_COLOR = range(10)


def _src_hash(path: str) -> str | None:
    try:
        return file_xxh64(path)[0]
    except OSError:
        return None


def _bin_ok(path: str, digest: str | None) -> bool:
    try:
        return digest is not None and file_xxh64(path)[0] == digest
    except OSError:
        return False


class ChunkTask:
    """Convert one chunk of files (picklable; runs in a worker process)."""

    def __init__(self, work: str, size: int, fit: str, max_pixels: int) -> None:
        self.work, self.size, self.fit, self.max_pixels = work, size, fit, max_pixels

    def paths(self, cid: int) -> tuple[str, str]:
        base = os.path.join(self.work, "chunks", f"c-{cid:06d}")
        return base + ".bin", base + ".json"

    def __call__(self, job: tuple[int, list[tuple[str, str]]]) -> tuple[int, list[list], bool]:
        cid, entries = job
        bin_path, json_path = self.paths(cid)
        rels = [r for r, _ in entries]
        try:
            with open(json_path) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            cached = None
        if cached and cached.get("relpaths") == rels and _bin_ok(bin_path, cached.get("bin_xxh64")):
            recs = cached["records"]
            if all(_src_hash(p) == rec[_REC_SRC] for (_, p), rec in zip(entries, recs)):
                return cid, recs, True
        recs = []
        buf = bytearray()
        for rel, path in entries:
            try:
                pr, src_hash = process_file(path, self.size, self.fit, self.max_pixels)
            except ImageSkip as e:
                recs.append(["skip", str(e), _src_hash(path), 0, 0, None, 0, 0, None, False])
                continue
            recs.append(["ok", None, src_hash, len(buf), len(pr.png), pr.pixel_hash, pr.width, pr.height,
                         pr.mode, pr.true_color])
            buf += pr.png
        # Scratch files are not fsync'ed: the record file holds the bin's checksum, checked on reuse.
        atomic_write_bytes(bin_path, bytes(buf), fsync=False)
        atomic_write_bytes(json_path, dump_json({"relpaths": rels, "records": recs,
                                                 "bin_xxh64": xxhash.xxh64_hexdigest(buf)}, indent=None), fsync=False)
        return cid, recs, False


class ShardTask:
    """Write one shard from converted chunks, or keep it if it is already right (picklable)."""

    def __init__(self, out: str, work: str) -> None:
        self.out, self.work = out, work

    def __call__(self, job: tuple[str, str, list[tuple]]) -> tuple[str, dict, bool]:
        relpath, plan_fp, entries = job
        final = os.path.join(self.out, relpath)
        journal = os.path.join(self.work, "shards", relpath.replace("/", "__") + ".json")
        try:
            with open(journal) as f:
                rec = json.load(f)
            if rec.get("plan") == plan_fp and os.path.exists(final):
                digest, size = file_xxh64(final)
                if digest == rec["xxh64"] and size == rec["bytes"]:
                    return relpath, rec, True
        except (OSError, ValueError, KeyError):
            pass
        handles: dict[str, Any] = {}
        try:
            with ShardWriter(final) as w:
                for key, chunk_bin, off, length, cls_b, json_b in entries:
                    f = handles.get(chunk_bin)
                    if f is None:
                        f = handles[chunk_bin] = open(chunk_bin, "rb")
                    f.seek(off)
                    png = f.read(length)
                    if len(png) != length:
                        raise ShardgenError(f"scratch file {chunk_bin} is shorter than recorded; re-run with --overwrite")
                    w.add(key, {"png": png, "cls": cls_b, "json": json_b})
        finally:
            for f in handles.values():
                f.close()
        rec = {"plan": plan_fp, "path": relpath, "samples": w.samples, "bytes": w.bytes, "xxh64": w.xxh64}
        atomic_write_json(journal, rec)
        return relpath, rec, False


def _worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Terminated(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise _Terminated(signum)


# ----------------------------------------------------------------------------- build

def fingerprint_of(cfg: BuildConfig, layout: str, classes: list[str],
                   ratios: tuple[tuple[str, float], ...] | None) -> dict[str, Any]:
    """The options that decide the output, as recorded in ``manifest.json`` ``config``.

    ``splits`` holds the ratios used (the default ones too), or ``"as found"`` for a
    source that was already split. ``encoder`` (:func:`~shardgen.image.encoder_info`) is
    part of it so that a build is never resumed with another PNG encoder.
    """
    return {
        "size": cfg.size,
        "splits": dict(ratios) if ratios else "as found",
        "seed": cfg.seed,
        "shard_size": cfg.shard_size,
        "classes": list(classes),
        "fit": cfg.fit,
        "format": cfg.format,
        "group": cfg.group,
        "index": os.path.basename(cfg.index) if cfg.index else None,
        "max_pixels": cfg.pixel_limit,
        "layout": layout,
        "encoder": encoder_info(),
    }


def _resolve(cfg: BuildConfig):
    """Scan SRC and settle classes and splits; returns (scan, items, classes, ratios, excluded)."""
    sr = scan(cfg.src, cfg.index, cfg.group)
    if not sr.items:
        raise UsageError(f"SRC {cfg.src}: no images found ({sr.layout} layout)")
    if cfg.classes is not None:
        unknown = [c for c in cfg.classes if c not in sr.labels]
        if unknown:
            raise UsageError(f"--classes: unknown class {unknown[0]!r} (found: {', '.join(sr.labels)})")
        classes = list(cfg.classes)
    else:
        classes = list(sr.labels)
    keep = set(classes)
    items = [it for it in sr.items if it.label in keep]
    excluded = len(sr.items) - len(items)
    if not items:
        raise UsageError(f"SRC {cfg.src}: no images in the selected classes")
    if sr.splits is not None:
        if cfg.split_ratios is not None:
            raise UsageError(f"SRC {cfg.src} is already split ({', '.join(sr.splits)}); --splits does not apply")
        ratios = None
    else:
        ratios = cfg.split_ratios or parse_splits("train=0.8,test=0.2")
    return sr, items, classes, ratios, excluded


def _run_pool(pool, fn, jobs, on_result):
    if pool is None:
        for j in jobs:
            on_result(fn(j))
    else:
        for r in pool.imap_unordered(fn, jobs):
            on_result(r)


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    tqdm.monitor_interval = 0
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                leave=False, mininterval=0.5)


def build(cfg: BuildConfig, overwrite: bool = False, progress: bool = True) -> BuildResult:
    """Run a build (or resume one). See the module docstring for the phases.

    Raises:
        UsageError: bad inputs or OUT state (exit code 2).
        BuildInterrupted: SIGINT/SIGTERM; the folder can be resumed.
        ShardgenError: OUT cannot be written (disk full, read-only).
    """
    t0 = time.perf_counter()
    sr, items, classes, ratios, excluded = _resolve(cfg)
    fp = fingerprint_of(cfg, sr.layout, classes, ratios)
    work_fp = dict(fp, src=os.path.realpath(cfg.src), index_path=os.path.realpath(cfg.index) if cfg.index else None)
    out = cfg.out
    try:
        prepare_out(out, work_fp, overwrite)
        work = os.path.join(out, WORK_DIR)
        os.makedirs(os.path.join(work, "chunks"), exist_ok=True)
        os.makedirs(os.path.join(work, "shards"), exist_ok=True)
        _clean_temporaries(out)
        atomic_write_json(os.path.join(work, "config.json"), work_fp)
        if os.path.exists(os.path.join(out, MANIFEST)):
            # Readers must never see a manifest listing shards that are being rewritten.
            os.unlink(os.path.join(out, MANIFEST))
    except OSError as e:
        raise UsageError(f"OUT {out}: cannot write ({e.strerror or e})") from None

    keys = make_keys(items, sr.layout)
    src = cfg.src
    jobs = [(cid, [(it.relpath, os.path.join(src, it.relpath)) for it in items[s:s + CHUNK]])
            for cid, s in enumerate(range(0, len(items), CHUNK))]
    records: list[list | None] = [None] * len(items)
    state = {"reused": 0, "kept": 0}
    n_workers = min(cfg.n_workers, max(1, len(jobs)))
    old_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    pool = None
    phase = "converting images"
    try:
        if n_workers > 1:
            # fork: fast start, and works when __main__ is not importable (stdin, notebooks).
            # Nothing here holds locks or threads at this point (the progress bars start later).
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            pool = mp.get_context(method).Pool(n_workers, initializer=_worker_init)
        chunk_task = ChunkTask(work, cfg.size, cfg.fit, cfg.pixel_limit)
        bar = _progress(len(items), "convert", "img", progress)

        def got_chunk(r):
            cid, recs, reused = r
            records[cid * CHUNK:cid * CHUNK + len(recs)] = recs
            state["reused"] += reused
            bar.update(len(recs))

        _run_pool(pool, chunk_task, jobs, got_chunk)
        bar.close()

        phase = "writing shards"
        plan = _plan(cfg, items, keys, records, classes, ratios, work)
        for sp in plan["split_names"]:
            os.makedirs(os.path.join(out, sp), exist_ok=True)
        bar = _progress(len(plan["jobs"]), "shards", "shard", progress)
        shard_recs: dict[str, dict] = {}

        def got_shard(r):
            rel, rec, kept = r
            shard_recs[rel] = rec
            state["kept"] += kept
            bar.update(1)

        _run_pool(pool, ShardTask(out, work), plan["jobs"], got_shard)
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        phase = "writing the manifest"
        manifest = _finish(cfg, out, work, fp, classes, plan, shard_recs, sr, excluded)
    except (KeyboardInterrupt, _Terminated) as e:
        signum = e.signum if isinstance(e, _Terminated) else signal.SIGINT
        if pool is not None:
            pool.terminate()
            pool.join()
            pool = None
        _clean_temporaries(out)
        raise BuildInterrupted(
            f"interrupted while {phase}; {out} holds a resumable build: run the same command again to resume",
            int(signum),
        ) from None
    except OSError as e:
        if pool is not None:
            pool.terminate()
            pool.join()
            pool = None
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            _clean_temporaries_quietly(out)
            where = f" ({e.filename})" if e.filename else ""
            raise ShardgenError(
                f"cannot write to {out} while {phase}: {e.strerror}{where}; "
                "fix that and run the same command again to resume"
            ) from None
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        signal.signal(signal.SIGTERM, old_handler)

    all_skips = list(sr.skipped) + plan["skips"]
    return BuildResult(out=out, manifest=manifest, skipped=all_skips, images=len(items),
                       seconds=time.perf_counter() - t0, reused_chunks=state["reused"], total_chunks=len(jobs),
                       kept_shards=state["kept"], total_shards=len(plan["jobs"]))


def _clean_temporaries_quietly(out: str) -> None:
    try:
        _clean_temporaries(out)
    except OSError:
        pass


def _plan(cfg, items, keys, records, classes, ratios, work) -> dict:
    """Splits, duplicate report, shuffled shard layout and the shard jobs."""
    cls_index = {c: i for i, c in enumerate(classes)}
    ok = [i for i, r in enumerate(records) if r[_REC_STATUS] == "ok"]
    skips = [Skip(items[i].relpath, records[i][_REC_REASON]) for i, r in enumerate(records) if r[_REC_STATUS] != "ok"]
    by_pixels: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_pixels[records[i][_REC_PIX]].append(i)
    dup_groups = [g for g in by_pixels.values() if len(g) > 1]
    dup_groups.sort(key=lambda g: items[g[0]].relpath)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        if items[i].group is not None:
            by_group[items[i].group].append(i)
    # Work on the usable samples only, indexed 0..len(ok)-1.
    pos = {i: j for j, i in enumerate(ok)}
    together = [[pos[i] for i in g] for g in dup_groups] + [[pos[i] for i in g] for g in by_group.values() if len(g) > 1]
    if ratios is None:
        split_of = [items[i].split for i in ok]
        split_names = sorted({s for s in split_of})
    else:
        split_of = assign_splits([items[i].relpath for i in ok], [cls_index[items[i].label] for i in ok],
                                 together, ratios, cfg.seed)
        split_names = [s for s, _ in ratios]
    duplicates = []
    conflicts = 0
    cross_split = 0
    for g in dup_groups:
        labels = sorted({items[i].label for i in g})
        splits_g = sorted({split_of[pos[i]] for i in g})
        conflict = len(labels) > 1
        conflicts += conflict
        cross_split += len(splits_g) > 1
        duplicates.append({"paths": [items[i].relpath for i in g], "classes": labels,
                           "label_conflict": conflict, "splits": splits_g})
    by_split: dict[str, list[int]] = defaultdict(list)
    for j, i in enumerate(ok):
        by_split[split_of[j]].append(i)
    jobs = []
    shards_of: dict[str, list[str]] = {}
    labels_of: dict[str, list] = {}
    counts: dict[str, dict[str, int]] = {}
    for sp in split_names:
        idx = by_split.get(sp, [])
        order = shuffle_order([keys[i] for i in idx], cfg.seed, sp)
        idx = [idx[o] for o in order]
        counts[sp] = {c: 0 for c in classes}
        labels_of[sp] = []
        shards_of[sp] = []
        for n, s in enumerate(range(0, len(idx), cfg.shard_size)):
            rel = shard_relpath(sp, n)
            entries = []
            h = xxhash.xxh64()
            for i in idx[s:s + cfg.shard_size]:
                it, rec = items[i], records[i]
                ci = cls_index[it.label]
                meta = json.dumps({"class": it.label, "source": it.relpath, "width": rec[_REC_W],
                                   "height": rec[_REC_H], "mode": rec[_REC_MODE]},
                                  separators=(",", ":"), ensure_ascii=False).encode()
                chunk_bin = os.path.join(work, "chunks", f"c-{i // CHUNK:06d}.bin")
                entries.append((keys[i], chunk_bin, rec[_REC_OFF], rec[_REC_LEN], str(ci).encode(), meta))
                h.update(f"{keys[i]}\x00{rec[_REC_PIX]}\x00{rec[_REC_LEN]}\x00{ci}\x00".encode() + meta)
                counts[sp][it.label] += 1
                labels_of[sp].append([f"{keys[i]}.png", ci])
            jobs.append((rel, h.hexdigest(), entries))
            shards_of[sp].append(rel)
    true_color = sum(1 for i in ok if records[i][_REC_COLOR])
    return {"jobs": jobs, "shards_of": shards_of, "labels_of": labels_of, "counts": counts,
            "split_names": split_names, "skips": skips, "duplicates": duplicates,
            "report": {"images_found": len(items), "images_used": len(ok), "true_color": true_color,
                       "duplicate_groups": len(dup_groups), "duplicate_images": sum(len(g) for g in dup_groups),
                       "label_conflicts": conflicts, "duplicates_across_splits": cross_split}}


def _finish(cfg, out, work, fp, classes, plan, shard_recs, sr, excluded) -> dict:
    split_names = plan["split_names"]
    # Remove shards and split folders left over from an earlier, larger plan.
    planned = {rel for rels in plan["shards_of"].values() for rel in rels}
    for e in sorted(os.listdir(out)):
        p = os.path.join(out, e)
        if e == WORK_DIR or not os.path.isdir(p) or not _is_own_split_dir(p, e):
            continue
        for f in os.listdir(p):
            if f.endswith(".tar") and f"{e}/{f}" not in planned:
                os.unlink(os.path.join(p, f))
        if e not in split_names:
            shutil.rmtree(p)
    atomic_write_json(os.path.join(out, CLASSES), {"classes": classes})
    for sp in split_names:
        os.makedirs(os.path.join(out, sp), exist_ok=True)
        atomic_write_bytes(os.path.join(out, sp, DATASET_JSON),
                           json.dumps({"labels": plan["labels_of"][sp]}).encode() + b"\n")
    skips = list(sr.skipped) + plan["skips"]
    skips.sort(key=lambda s: s.path)
    atomic_write_bytes(os.path.join(out, SKIPPED),
                       b"".join(dump_json(s.to_json(), indent=None) for s in skips))
    atomic_write_bytes(os.path.join(out, DUPLICATES),
                       b"".join(dump_json(d, indent=None) for d in plan["duplicates"]))
    splits = {}
    for sp in split_names:
        shards = [{"path": rel, "samples": shard_recs[rel]["samples"], "bytes": shard_recs[rel]["bytes"],
                   "xxh64": shard_recs[rel]["xxh64"]} for rel in plan["shards_of"][sp]]
        splits[sp] = {"samples": sum(s["samples"] for s in shards), "class_counts": plan["counts"][sp],
                      "shards": shards}
    report = dict(plan["report"], layout=sr.layout, excluded_by_classes=excluded)
    manifest = {
        "format": FORMAT,
        "classes": classes,
        "image": {"size": cfg.size, "mode": "L", "ext": cfg.format, "encoder": encoder_info()},
        "splits": splits,
        "skipped": len(skips),
        "report": report,
        "config": fp,
        "shardgen_version": __version__,
    }
    atomic_write_json(os.path.join(out, MANIFEST), manifest)
    shutil.rmtree(work, ignore_errors=True)
    return manifest
