"""What a build's Dask workers run (:mod:`shardgen.engines.dask`): module-level, so pickled by reference.

Each task goes through :func:`run_batch`, which checks the worker's library versions
against the client's and sets Pillow's limit before running the build's own task object
on each of its jobs (:func:`batches` cuts the build's jobs into tasks).
"""

from __future__ import annotations

import os
import secrets
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

from .. import __version__
from ..format import TMP_PREFIX, CodecVersions
from ..imaging.codecs import codec_versions

__all__ = ["short_error", "batches", "dask_setup"]


def short_error(e: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__



def dask_setup(worker: Any) -> None:
    """Run by each worker of a ``local:N`` cluster as it starts, before it joins (Dask's worker
    preload, :func:`shardgen.engines.dask_setup.local_cluster`): Ctrl-C is the client's to handle (it
    closes the cluster; a worker would print a traceback). The build's task modules come next in
    the preload list (:attr:`~shardgen.engines.dask.Cluster.preload`)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_versions() -> dict[str, Any]:
    return {"shardgen": __version__, "codecs": codec_versions().to_json()}


def run_batch(fn: Callable, jobs: list, max_pixels: int, codecs: dict[str, str]) -> list:
    """One Dask task on a worker: ``[fn(job) for job in jobs]``, after checking that the worker
    has the client's libraries (a worker may join late) and setting Pillow's limit.

    Several of the build's jobs per Dask task: each task costs the scheduler and the client
    some milliseconds of CPU, which on a small machine the workers would otherwise get."""
    from ..imaging.codecs import check_same_codecs
    from ..imaging.image import configure_worker

    check_same_codecs(CodecVersions.parse(codecs), codec_versions(),
                      "a Dask worker has {lib} {got}, the client has {lib} {expected}")
    configure_worker(max_pixels)
    return [fn(job) for job in jobs]


def batches(jobs: Iterable, total: int, slots: int, most: int) -> Iterator[list]:
    """``jobs`` cut into consecutive batches, in order: large ones first, single jobs at the end.

    Each batch takes about a quarter of the remaining jobs' share per worker thread, between 1
    and ``most`` jobs, so the task count falls by up to ``most`` times while the last tasks stay
    small enough for the workers to finish together (guided scheduling).

    Args:
        jobs: the build's jobs (chunks or shards), taken one at a time.
        total: how many there are.
        slots: worker threads of the cluster (at least 1).
        most: the largest batch.
    """
    it, i, slots = iter(jobs), 0, max(1, slots)
    while i < total:
        batch = list(islice(it, max(1, min(most, (total - i) // (4 * slots)))))
        if not batch:
            return
        yield batch
        i += len(batch)


def probe_worker(path: str, token: str, loc: Any = None) -> str | None:
    """None when this worker reads ``token`` from ``path`` and may write next to it, else why not.

    ``loc``: a :class:`~shardgen.storage.location.Location` whose filesystem holds ``path`` (None: this machine's).
    """
    try:
        if loc is not None:
            from ..storage.io import put_atomic

            fs = loc.fs()
            if fs.cat_file(path).decode() != token:
                return f"{path} holds something else"
            test = f"{path}-{secrets.token_hex(4)}"
            put_atomic(fs, test, b"")
            fs.rm(test)
            return None
        with open(path) as f:
            if f.read() != token:
                return f"{path} holds something else (another machine's folder of that name?)"
        test = os.path.join(os.path.dirname(path), f"{TMP_PREFIX}probe-{secrets.token_hex(4)}")
        with open(test, "wb"):
            pass
        os.unlink(test)
    except Exception as e:  # noqa: BLE001 - any failure means "not reachable"
        return f"{path}: {getattr(e, 'strerror', None) or short_error(e)}"
    return None


def file_size(path: str, loc: Any = None) -> int | str:
    """The file's size in bytes as this worker sees it, or why it cannot."""
    try:
        return int(loc.fs().size(path)) if loc is not None else os.stat(path).st_size
    except Exception as e:  # noqa: BLE001
        return f"{path}: {getattr(e, 'strerror', None) or short_error(e)}"
