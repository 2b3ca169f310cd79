"""``shardgen build``: labelled images -> deterministic, checksummed WebDataset shards.

The orchestration of a build; each phase lives in its own module:

0. **Lock** (:mod:`shardgen.build.lock`): OUT is held for the whole run (a ``flock``, or a lease on
   object storage); a second build on the same OUT refuses.
1. :mod:`shardgen.sources.folder` / :mod:`shardgen.sources.index` find the labelled images; classes and
   splits are settled (:mod:`shardgen.build.resolve`), and OUT is checked (:mod:`shardgen.build.outdir`).
2. **Convert** (:mod:`shardgen.build.convert`): worker processes turn chunks of files into PNGs
   in the scratch folder ``OUT/.shardgen-work``; finished chunks are reused on resume.
3. **Assemble** (:mod:`shardgen.build.assemble`): splits, shuffle and shard layout are planned,
   and each shard is written atomically; finished shards are kept on resume.
4. **Finish** (:mod:`shardgen.build.finish`): the metadata files, and ``manifest.json`` last.

Memory stays proportional to the file list: images live on disk between the phases.
"""

from __future__ import annotations

import contextlib
import errno
import multiprocessing as mp
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from .assemble import ShardTask
from ..sources.columns import RecordTable, StrColumn
from .config import BuildConfig, fingerprint_of, parse_splits
from .convert import CHUNK, ChunkTask, chunk_jobs
from ..errors import BuildFailed, ShardgenError
from ..format import WORK_DIR, Manifest, make_keys
from .finish import finish_build
from .plan import make_plan
from ..engines.pool import AHEAD, run_jobs, worker_init
from ..progress import bar as progress_bar
from .resolve import resolve
from ..sources.files import SourceFiles, source_files
from ..sources.items import Skip
from .split import empty_split_notes
from ..storage import is_url
from .store import OutStore, out_store

__all__ = ["BuildConfig", "BuildResult", "BuildInterrupted", "build", "parse_splits", "CHUNK"]


class BuildInterrupted(ShardgenError):
    """SIGINT/SIGTERM: the build stopped and can be resumed."""

    def __init__(self, msg: str, signum: int) -> None:
        super().__init__(msg)
        self.exit_code = 128 + signum


@dataclass
class BuildResult:
    """What a build produced, for the summary."""

    out: str
    manifest: Manifest
    skipped: list[Skip]
    images: int
    seconds: float
    reused_chunks: int = 0
    total_chunks: int = 0
    kept_shards: int = 0
    total_shards: int = 0
    #: sources of reused chunks read again to check them (stamp changed, or ``rehash``)
    rehashed_sources: int = 0
    #: one line each for the user (the CLI prints them as ``note: ...`` on stderr)
    notes: list[str] = field(default_factory=list)
    #: splits with a non-zero ratio that got no samples (an error under ``--strict``)
    empty_splits: list[str] = field(default_factory=list)


class _Terminated(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _raise_terminated(signum, _frame):
    raise _Terminated(signum)


@dataclass
class _Run:
    """The state of one build run, shared by its phases."""

    cfg: BuildConfig
    #: OUT (:mod:`shardgen.build.store`: a folder or a URL)
    store: OutStore
    #: where the sources are read (:mod:`shardgen.sources.files`)
    files: SourceFiles
    progress: bool
    pool: Any = None
    #: a :class:`~shardgen.engines.dask.DaskPool` (``--scheduler``): the tasks run there instead
    dask: Any = None
    phase: str = "converting images"
    reused: int = 0
    kept: int = 0
    rehash: bool = False
    rehashed: int = 0
    #: jobs handed to the process pool ahead of their results
    window: int = 0
    #: the hold on OUT (:func:`shardgen.build.lock.hold_out`); checked after every job
    lock: Any = None

    def start_pool(self, n_jobs: int) -> None:
        """Start the worker processes (at least one: images are only ever decoded there, so
        Pillow's process-wide limit is set to ``--max_pixels`` in them, never in the caller)."""
        if self.dask is not None:
            self.dask.check_reach(self.store.work, "OUT", self.store.work_location)
            self.dask.out = self.store.url
            self.pool = self.dask
            return
        n = min(self.cfg.n_workers, max(1, n_jobs))
        # fork: fast start, and works when __main__ is not importable (stdin, notebooks).
        # Nothing here holds locks or threads at this point (the progress bars start later).
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        self.pool = mp.get_context(method).Pool(n, initializer=worker_init, initargs=(self.cfg.pixel_limit,))
        self.window = AHEAD * n

    def stop_pool(self, wait: bool) -> None:
        if self.pool is not None:
            if wait:
                self.pool.close()
            else:
                self.pool.terminate()
            self.pool.join()
            self.pool = None

    def convert(self, jobs, n_items: int) -> RecordTable:
        cfg = self.cfg
        records = RecordTable(n_items)
        bar = progress_bar(n_items, "convert", "img", self.progress)

        def got(r):
            cid, recs, reused = r[:3]
            records.put(cid * CHUNK, recs)
            self.reused += reused
            self.rehashed += r[3] if len(r) > 3 else 0  # ChunkResult.rehashed
            bar.update(len(recs))
            self.lock.check()

        task = ChunkTask(self.files, self.store, cfg.image_options, rehash=self.rehash)
        run_jobs(self.pool, task, task.pending_first(jobs), got, self.window)
        bar.close()
        return records

    def write_shards(self, plan) -> dict[str, dict]:
        self.phase = "writing shards"
        self.store.make_split_dirs(plan.splits)
        bar = progress_bar(plan.n_shards, "shards", "shard", self.progress)
        recs: dict[str, dict] = {}

        def got(r):
            rel, rec, kept = r
            recs[rel] = rec
            self.kept += kept
            bar.update(1)
            self.lock.check()

        task = ShardTask(self.store)
        # half the conversion's window: a shard job carries its samples' keys and .json bytes
        # (a 10,000-sample shard about 2 MB), and each keeps a worker busy for a while
        run_jobs(self.pool, task, plan.jobs(), got, max(1, self.window // 2))
        bar.close()
        return recs

    def fail(self, e: BaseException) -> ShardgenError | None:
        """The error to raise for an interruption or a write failure (None: re-raise ``e``).

        An interruption stops the workers at once. Any other failure lets the jobs already handed
        to them end (at most the feeding window; no new job is fed once a run fails): killing a
        worker while it sends a result leaves the pool's result lock held, and
        ``Pool.terminate`` then waits forever for its task thread (seen on a full disk)."""
        interrupted = isinstance(e, (KeyboardInterrupt, _Terminated))
        self.stop_pool(wait=not interrupted and self.dask is None)  # a Dask run cancels its tasks
        if interrupted:
            signum = e.signum if isinstance(e, _Terminated) else signal.SIGINT
            self.store.clean_temporaries(quietly=True)
            return BuildInterrupted(f"interrupted while {self.phase}; {self.store.url} holds a resumable build: "
                                    "run the same command again to resume", int(signum))
        if not isinstance(e, OSError):
            return None
        where = f" ({e.filename})" if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            self.store.clean_temporaries(quietly=True)
            return ShardgenError(f"cannot write to {self.store.url} while {self.phase}: {e.strerror}{where}; "
                                 "fix that and run the same command again to resume")
        # storage that failed past its retries (a 500, a lost connection)
        self.store.clean_temporaries(quietly=True)
        return ShardgenError(f"storage error while {self.phase}: {e.strerror or e}{where}; {self.store.url} holds a "
                             "resumable build: run the same command again to resume")


def _check_used(plan, found: int) -> None:
    """A build that would hold no sample stops before writing anything (exit 1), with the
    most common reasons its images were skipped; the scratch folder is kept for a resume.

    Raises:
        BuildFailed: no image found was used.
    """
    if any(len(s.rows) for sp in plan.splits.values() for s in sp.shards):
        return
    reasons = Counter(sk.reason for sk in plan.skips).most_common(3)
    why = "; ".join(f"{r} ({n:,})" for r, n in reasons)
    raise BuildFailed(f"no image was used: {found:,} found, all {len(plan.skips):,} skipped"
                      + (f"; most common reasons: {why}" if why else "") + " (nothing was written)")


@contextlib.contextmanager
def _hold_out(store: OutStore):
    """Hold OUT for the ``with`` block (:meth:`~shardgen.build.store.OutStore.hold`: a ``flock`` for a
    folder, a lease for a URL); yields the hold (``check()``, ``note``, ``release()``).

    Raises:
        OutBusy: another build holds OUT. UsageError: OUT cannot be used.
    """
    lock = store.hold()
    try:
        yield lock
    finally:
        lock.release()


def _sigterm_raises():
    """Make SIGTERM raise inside the build (main thread only); returns the handler to restore."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


def build(cfg: BuildConfig, overwrite: bool = False, progress: bool = True, rehash: bool = False, cluster=None,
          storage_options: dict | None = None, endpoint_url: str | None = None, strict: bool = False) -> BuildResult:
    """Run a build (or resume one). See the module docstring for the phases.

    Args:
        cfg: what to build.
        overwrite: replace a build of another config (or other library versions) in OUT.
        progress: progress bars on stderr.
        rehash: on resume, read every source of a finished chunk again to compare its xxh64,
            instead of trusting an unchanged stat stamp (:mod:`shardgen.build.stamps`); never changes
            the output. (Sources given as a URL are always read again.)
        cluster: a :class:`~shardgen.engines.dask.Cluster` (``--scheduler``): the conversion and
            the shards run as Dask tasks there; the output is the same bytes (a ``local:N``
            cluster starts while SRC is scanned). None: worker processes on this machine.
        storage_options, endpoint_url: fsspec options (and the S3 endpoint) of a SRC or OUT
            given as a URL (:func:`shardgen.storage.storage_options_for`); never recorded.
        strict: refuse, before any work, a build that is probably not what was meant (the scan's
            ``doubts``: classes that look like patient folders, a ``--no_finding`` that matches
            nothing); without it they are notes.

    Raises:
        UsageError: bad inputs or OUT state (exit code 2).
        BuildInterrupted: SIGINT/SIGTERM; the folder can be resumed.
        BuildFailed: no image found was used (all skipped; exit code 1, nothing written); with
            ``strict``, a doubt about the build (before any work).
        ShardgenError: OUT cannot be written (disk full, read-only); the Dask scheduler is lost.
        OutBusy: another build holds OUT (exit code 1; nothing was changed).
        OutLockLost: the hold on OUT was lost while building (a lease that could not be renewed):
            stopped before ``manifest.json`` (exit code 1).
    """
    urls = None
    if storage_options is not None or endpoint_url is not None or is_url(cfg.src) or is_url(cfg.out):
        from .remote_out import paths_of

        urls = paths_of(cfg.src, cfg.out, storage_options, endpoint_url)
    # held before anything looks at OUT (or a cluster starts)
    with _hold_out(out_store(cfg.out, urls.out if urls else None)) as lock:
        if cluster is None:
            return _build(cfg, overwrite, progress, rehash, None, urls, lock, strict)
        from ..engines.dask_start import start

        # tcp://: reached now; local:N: starts while SRC is scanned, its workers importing the tasks' modules
        dask = start(replace(cluster, preload=(ChunkTask.__module__, ShardTask.__module__)), cfg.pixel_limit)
        try:
            return _build(cfg, overwrite, progress, rehash, dask, urls.for_workers() if urls else None, lock, strict)
        finally:
            dask.close()


def _build(cfg: BuildConfig, overwrite: bool, progress: bool, rehash: bool, dask, urls, lock,
           strict: bool = False) -> BuildResult:
    t0 = time.perf_counter()
    sr, items, classes, ratios, excluded = resolve(cfg, urls)
    if strict and sr.doubts:
        raise BuildFailed(f"--strict: {sr.doubts[0]}")
    fp = fingerprint_of(cfg, sr.layout, classes, ratios)
    work_fp = dict(fp, src=sr.root if is_url(sr.root) else os.path.realpath(sr.root),
                   index_path=os.path.realpath(cfg.index) if cfg.index else None)
    keys = make_keys(items.key_sources(), items.relpaths, StrColumn)
    jobs = chunk_jobs(sr.root, items.relpaths)
    if dask is not None:
        dask = dask.wait()  # the cluster started meanwhile (cluster_start.Starting); no task has run
        dask.check_source([f"{sr.root}/{it.relpath}" for it in items[:20]], f"SRC {cfg.src}",
                          urls.src if urls else None)
    store = out_store(cfg.out, urls.out if urls else None)
    store.start(work_fp, overwrite)
    run = _Run(cfg, store, sr.reader or source_files(urls.src if urls else None), progress, rehash=rehash, dask=dask,
               lock=lock)
    old_handler = _sigterm_raises()
    try:
        run.start_pool(len(jobs))
        records = run.convert(jobs, len(items))
        plan = make_plan(cfg, items, keys, records, classes, ratios, store.work)
        _check_used(plan, len(items))
        shard_recs = run.write_shards(plan)
        run.stop_pool(wait=True)
        if dask is not None:
            store.clean_temporaries()  # a worker killed while writing a shard leaves its temporary file
        run.phase = "writing the manifest"
        manifest = store.finish(lambda folder: finish_build(cfg, folder, os.path.join(folder, WORK_DIR), fp, classes,
                                                            plan, shard_recs, sr, excluded),
                                plan.splits, set(plan.shard_relpaths()), before_manifest=lambda: lock.check(strict=True))
    except (KeyboardInterrupt, _Terminated, OSError) as e:
        err = run.fail(e)
        if err is None:
            raise
        raise err from None
    finally:
        run.stop_pool(wait=False)
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    samples = {sp: s.samples for sp, s in manifest.splits.items()}
    empty = [sp for sp, _ in ratios or () if not samples.get(sp)]
    notes = list(sr.notes) + list(sr.doubts) + empty_split_notes(ratios or (), samples) + ([lock.note] if lock.note else [])
    return BuildResult(out=cfg.out, manifest=manifest, skipped=list(sr.skipped) + plan.skips, images=len(items),
                       seconds=time.perf_counter() - t0, reused_chunks=run.reused, total_chunks=len(jobs),
                       kept_shards=run.kept, total_shards=plan.n_shards, rehashed_sources=run.rehashed,
                       notes=notes, empty_splits=empty)
