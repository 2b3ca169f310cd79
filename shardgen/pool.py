"""The build's process pool: its workers' start, and jobs fed to it a window at a time."""

from __future__ import annotations

import signal
import threading
from multiprocessing.pool import Pool as ProcessPool
from typing import Callable

from .imaging.image import configure_worker

__all__ = ["AHEAD", "run_jobs", "worker_init"]

#: Jobs per worker process handed to the pool ahead of their results (bounds the client's memory).
AHEAD = 4


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
