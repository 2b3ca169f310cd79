"""The engines' interface, stated once, and the local process pool.

An engine runs ``fn(job)`` for every job of a phase and hands back the results in completion
order: :func:`run_jobs` on a :class:`multiprocessing.pool.Pool` (or in this process), or a
:class:`~shardgen.engines.dask.DaskPool` with the same ``imap_unordered``. ``fn`` is a picklable
callable that says how a cluster should batch it (its ``batching``, a :class:`Batching`);
``jobs`` is any iterable, a :class:`SizedJobs` when it should be made lazily with its count known.
"""

from __future__ import annotations

import signal
import threading
from dataclasses import dataclass
from multiprocessing.pool import Pool as ProcessPool
from typing import Callable, Iterator

from ..imaging.image import configure_worker

__all__ = ["AHEAD", "Batching", "SizedJobs", "run_jobs", "worker_init"]

#: Jobs per worker process handed to the pool ahead of their results (bounds the client's memory).
AHEAD = 4


@dataclass(frozen=True)
class Batching:
    """How a cluster engine cuts one kind of job into tasks: each task class states its own.

    Attributes:
        phase: the phase's name in task keys (``shardgen-<phase>-<token>-<n>``: the Dask
            dashboard groups tasks by it).
        most_per_task: the most jobs per Dask task (several amortise the scheduler's cost).
        ahead_per_slot: tasks submitted ahead of the finished ones, per worker thread (bounds
            what the scheduler and the client hold).
    """

    phase: str
    most_per_task: int
    ahead_per_slot: int

    def __post_init__(self) -> None:
        if not self.phase.isidentifier() or self.most_per_task < 1 or self.ahead_per_slot < 1:
            raise ValueError(f"bad batching {self!r}: a name and two counts >= 1")


class SizedJobs:
    """A build phase's jobs, made one at a time as they are taken, with their count (the
    Dask pool sizes its tasks by it; nothing holds them all)."""

    def __init__(self, n: int, make: Callable[[], Iterator]) -> None:
        self.n, self._make = n, make

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        return self._make()


def run_jobs(pool, fn, jobs, on_result: Callable, window: int = 0) -> None:
    """``on_result(fn(job))`` for every job, on ``pool`` (in this process when None).

    A process pool's task thread would draw every job at once (``imap_unordered`` feeds
    its queue as fast as it can), so the lazily made jobs are handed to it only
    ``window`` ahead of the results; the Dask pool keeps its own window.
    """
    if pool is None:
        for j in jobs:
            on_result(fn(j))
        return
    if not isinstance(pool, ProcessPool):
        for r in pool.imap_unordered(fn, jobs):
            on_result(r)
        return
    slots, stop = threading.Semaphore(max(1, window)), threading.Event()

    def fed():
        for j in jobs:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():  # the run failed: let the pool's task thread end
                    return
            yield j

    try:
        for r in pool.imap_unordered(fn, fed()):
            slots.release()
            on_result(r)
    finally:
        stop.set()


def worker_init(max_pixels: int) -> None:
    """Start of each build worker process: Ctrl-C is the parent's to handle; Pillow's limit is ours."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    configure_worker(max_pixels)
