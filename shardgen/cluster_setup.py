"""The client side's process setup for ``--scheduler``: Dask's log lines off while the build runs,
and a local cluster whose workers leave Ctrl-C to the client."""

from __future__ import annotations

import os
from typing import Any

__all__ = ["QuietLogs", "local_cluster"]


class QuietLogs:
    """Dask's own log lines (reconnect attempts, tracebacks of lost connections) off while the build runs.

    The build reports what matters as one line; the loggers' levels are put back by :meth:`restore`,
    and so are the environment variables that a local cluster's Nanny sets in this process
    before it starts a worker (:attr:`env`: their values before, None where unset).
    """

    NAMES = ("distributed", "distributed.client", "distributed.scheduler", "distributed.worker",
             "distributed.nanny", "distributed.core", "distributed.comm", "distributed.batched", "tornado")

    def __init__(self) -> None:
        import logging

        self._saved = {n: logging.getLogger(n).level for n in self.NAMES}
        self.env: dict[str, str | None] = {}
        for n in self.NAMES:
            logging.getLogger(n).setLevel(logging.CRITICAL + 1)

    def restore(self) -> None:
        import logging

        for n, level in self._saved.items():
            logging.getLogger(n).setLevel(level)
        self._saved = {}
        _put_back(self.env)
        self.env = {}


#: Dask settings of a local cluster's workers that cost the build CPU time and give it nothing:
#: glibc's trim threshold at 64 KiB (see :func:`local_cluster`), and the statistical profiler,
#: which samples each worker's stack every 10 ms for the dashboard's Profile page.
_WORKER_CONFIG = {"distributed.worker.profile.enabled": False,
                  "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def local_cluster(distributed: Any, n: int, quiet: QuietLogs) -> Any:
    """A LocalCluster of ``n`` one-thread worker processes that ignore Ctrl-C (the client handles it
    and closes them; otherwise each would print a traceback). Started with SIGINT ignored, which
    the spawned processes inherit; the caller's handler is put back at once.

    The workers start without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``: with it, glibc hands every
    freed image buffer back to the kernel and faults it in again for the next image (the workers
    spent twice the system time of the multiprocessing build's). They run without a memory limit,
    like the multiprocessing build's, and without the profiler (:data:`_WORKER_CONFIG`).
    The Nanny sets its variables in this process's environment before it spawns a worker; they
    are put back once the workers run, and again by ``quiet.restore()`` (a worker restarted later).
    """
    import signal
    import threading

    import dask

    before = dict(os.environ)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        with dask.config.set(_WORKER_CONFIG):  # read by each Nanny as it is made (and given to its worker)
            return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                            silence_logs=50, memory_limit=0)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
        quiet.env = {k: before.get(k) for k in {*before, *os.environ} if os.environ.get(k) != before.get(k)}
        _put_back(quiet.env)


def _put_back(env: dict[str, str | None]) -> None:
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
