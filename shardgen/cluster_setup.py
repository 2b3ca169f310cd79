"""The client side's process setup for ``--scheduler``: Dask's log lines off while the build runs,
and a local cluster whose workers leave Ctrl-C to the client."""

from __future__ import annotations

from typing import Any

__all__ = ["QuietLogs", "local_cluster"]


class QuietLogs:
    """Dask's own log lines (reconnect attempts, tracebacks of lost connections) off while the build runs.

    The build reports what matters as one line; the loggers' levels are put back by :meth:`restore`.
    """

    NAMES = ("distributed", "distributed.client", "distributed.scheduler", "distributed.worker",
             "distributed.nanny", "distributed.core", "distributed.comm", "distributed.batched", "tornado")

    def __init__(self) -> None:
        import logging

        self._saved = {n: logging.getLogger(n).level for n in self.NAMES}
        for n in self.NAMES:
            logging.getLogger(n).setLevel(logging.CRITICAL + 1)

    def restore(self) -> None:
        import logging

        for n, level in self._saved.items():
            logging.getLogger(n).setLevel(level)
        self._saved = {}


def local_cluster(distributed: Any, n: int) -> Any:
    """A LocalCluster of ``n`` one-thread worker processes that ignore Ctrl-C (the client handles it
    and closes them; otherwise each would print a traceback). Started with SIGINT ignored, which
    the spawned processes inherit; the caller's handler is put back at once."""
    import signal
    import threading

    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                        silence_logs=50)
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
