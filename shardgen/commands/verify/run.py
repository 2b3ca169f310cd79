""":func:`verify`: open the build, read its shards in threads, collect, then the build-wide checks."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from ...cpus import usable_cpus
from ...errors import AccessDenied, InvalidBuild, ShardgenError, TransportError, UsageError
from ...format import ShardEntry
from ...progress import bar as progress_bar
from ...redact import redact
from ...storage import Build, filesystem, open_build, split_url, storage_error
from .buildwide import check_build_files, check_splits
from .result import Problem, VerifyResult
from .samples import Checker, Expect
from .shards import ShardResult, check_shard

__all__ = ["verify"]


def verify(source: str, *, decode: bool = True, workers: int | None = None, progress: bool = False,
           storage_options: dict[str, Any] | None = None) -> VerifyResult:
    """Check a whole build; see :mod:`shardgen.commands.verify` for the list of checks.

    Args:
        source: build folder, its ``manifest.json``, or a URL of either.
        decode: fully decode every image (pixel hashes, size and mode from the pixels).
            With False only the PNG header and chunk checksums are read and images are
            compared across splits by their bytes.
        workers: processes decoding images (default: all usable cores; 1: all in this process).
        progress: show a progress bar (samples) on stderr.
        storage_options: fsspec options for a URL (default: from the environment).

    Raises:
        UsageError: ``source`` is not a folder at all.
        TransportError: the storage cannot be reached or broke off, opening or reading any
            file (one line naming the redacted URL; never reported as a damaged shard).
        AccessDenied: the storage refused the credentials.
    """
    t0 = time.perf_counter()
    build, problem = _open_or_problem(source, storage_options)
    res = VerifyResult(root=str(source), decode=decode)
    if build is None:
        res.problems.append(problem)
        res.seconds = time.perf_counter() - t0
        return res
    m = build.manifest
    classes = tuple(m.classes)
    ex = Expect(classes=classes, size=m.image.size, mode=m.image.mode, ext=m.image.ext, decode=decode,
                multilabel=m.multilabel)
    res.classes = len(classes)
    res.image = f"{ex.size}x{ex.size} {ex.mode} {ex.ext}"
    res.codecs = m.codecs.describe() if m.codecs else ""
    jobs = [(split, sh) for split, s in m.splits.items() for sh in s.shards]
    res.shards_listed = len(jobs)
    results = _read_shards(build, ex, jobs, max(1, workers or usable_cpus()), progress)
    check_splits(build, results, classes, ex.ext, res)
    check_build_files(build, {sh.path for _, sh in jobs}, classes, res)
    res.seconds = time.perf_counter() - t0
    return res


def _open_or_problem(source: str, storage_options) -> tuple[Build | None, Problem | None]:
    """The build, or (a folder without a usable manifest) the problem with it.

    Raises:
        TransportError, AccessDenied: the storage cannot be reached, or refused the
            credentials (:func:`shardgen.storage.storage_error`): one line, never "no such
            build folder" (which a refused listing would otherwise look like).
        UsageError: no folder at ``source``.
    """
    try:
        return open_build(source, storage_options), None
    except (TransportError, AccessDenied):
        raise
    except (UsageError, InvalidBuild) as e:
        root, name = split_url(str(source)[7:] if str(source).startswith("file://") else str(source))
        fs, path = filesystem(root, storage_options)
        try:
            exists = fs.isdir(path)
        except Exception as err:  # noqa: BLE001 - any filesystem's listing failure
            mapped = storage_error(err, root)
            if mapped is not None:
                raise mapped from None
            exists = False
        if not exists:
            raise UsageError(f"{redact(root)}: no such build folder") from None
        msg = str(e)
        prefix = f"{root}/{name}: "
        return None, Problem(name, msg[len(prefix):] if msg.startswith(prefix) else msg)


class _Ticker:
    """Thread-safe progress counter feeding an optional tqdm bar."""

    def __init__(self) -> None:
        self.bar = None
        self.lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self.bar is not None and n:
            with self.lock:
                self.bar.update(n)


@dataclass(frozen=True)
class _ShardJob:
    """What a reader thread needs to check one listed shard."""

    build: Build
    checker: Checker

    def __call__(self, job: tuple[str, ShardEntry]) -> ShardResult:
        split, entry = job
        try:
            return check_shard(self.build, split, entry, self.checker)
        except (ShardgenError, BrokenProcessPool):
            raise
        except Exception as e:  # a check must never end in a traceback; say what happened
            return ShardResult(relpath=entry.path, split=split, problems=[
                Problem(entry.path, f"could not be checked: {type(e).__name__}: {e}")])


def _read_shards(build: Build, ex: Expect, jobs: list[tuple[str, ShardEntry]], workers: int,
                 progress: bool) -> list[ShardResult]:
    """Check every listed shard: up to 4 reader threads, decoding in ``workers`` processes.

    Returns:
        One result per job, in the order of ``jobs``.

    Raises:
        ShardgenError: a decoding process died.
    """
    total = sum(sh.samples for _, sh in jobs)
    # Without decoding, a sample costs less to check (~0.1 ms) than to send to a process.
    # The checker starts its processes first, before our reader threads and progress bar exist.
    checker = Checker(ex, workers if ex.decode and total > 64 else 1, tick := _Ticker())
    bar = None
    if progress:
        bar = progress_bar(total, "verify", "img")
    tick.bar = bar
    try:
        # Readers (threads) parse and hash shards; decoding runs in the checker's processes.
        with ThreadPoolExecutor(max_workers=min(workers, 4)) as pool:
            return list(pool.map(_ShardJob(build, checker), jobs))
    except BrokenProcessPool:
        raise ShardgenError("a verify worker process died unexpectedly (out of memory?); "
                            "run again with --workers 1 to check in one process") from None
    finally:
        checker.close()
        if bar is not None:
            bar.close()
