"""The client side's process setup for ``--scheduler``: Dask's log lines off while the build runs,
the connection (and the local cluster of ``local:N``, whose workers leave Ctrl-C to the client),
and the line that tells the user where the dashboard is."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ShardgenError
from .dask_tasks import short_error

__all__ = ["QuietLogs", "local_cluster", "open_client", "greeting", "NEED_DASK"]

#: The one line when ``distributed`` is not installed.
NEED_DASK = "--scheduler needs Dask: pip install 'shardgen[dask]'"


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
#: Imported by each worker of a local cluster as it starts (Dask's worker preload): its
#: ``dask_setup`` ignores Ctrl-C there.
_PRELOAD = "shardgen.engines.dask_tasks"


def local_cluster(distributed: Any, n: int, quiet: QuietLogs, modules: tuple[str, ...] = ()) -> Any:
    """A LocalCluster of ``n`` one-thread worker processes that ignore Ctrl-C (the client handles it
    and closes them; otherwise each would print a traceback). Each worker ignores SIGINT from the
    moment it imports its preload (:func:`shardgen.engines.dask_tasks.dask_setup`), before it joins the
    cluster, and so does a worker that its Nanny starts again later; a Ctrl-C during a worker's
    first half second (the interpreter importing ``distributed``) still reaches it. ``modules``
    are preloaded too (:attr:`~shardgen.engines.dask.Cluster.preload`). Nothing is
    changed in this process's signal handling, so this may run in any thread.

    The workers start without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``: with it, glibc hands every
    freed image buffer back to the kernel and faults it in again for the next image (the workers
    spent twice the system time of the multiprocessing build's). They run without a memory limit,
    like the multiprocessing build's, and without the profiler (:data:`_WORKER_CONFIG`).
    The Nanny sets its variables in this process's environment before it spawns a worker; they
    are put back once the workers run, and again by ``quiet.restore()`` (a worker restarted later).
    """
    import dask

    ours = [_PRELOAD, *modules]
    preload = [p for p in dask.config.get("distributed.worker.preload", []) or [] if p not in ours] + ours
    before = dict(os.environ)
    try:
        # read by each Nanny as it is made (and given to its worker)
        with dask.config.set({**_WORKER_CONFIG, "distributed.worker.preload": preload}):
            return distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                            silence_logs=50, memory_limit=0)
    finally:
        quiet.env = {k: before.get(k) for k in {*before, *os.environ} if os.environ.get(k) != before.get(k)}
        _put_back(quiet.env)


def open_client(distributed: Any, spec: Any, quiet: QuietLogs) -> tuple[Any, Any]:
    """``(client, local cluster or None)`` for a :class:`~shardgen.engines.dask.Cluster`; on any failure
    nothing is left running and ``quiet`` is restored.

    Raises:
        ShardgenError: the scheduler cannot be reached within ``spec.timeout_s``; the local
            cluster does not start.
    """
    import dask

    local = None
    # Dask logs each connection's last 1,000 messages: a build's jobs. None on our connections.
    with dask.config.set({"distributed.admin.low-level-log-length": 0}):
        try:
            if spec.local_workers is not None:
                local = local_cluster(distributed, spec.local_workers, quiet, spec.preload)
                # Results straight from the workers: one hop instead of two through the scheduler.
                return distributed.Client(local, timeout=spec.timeout_s, direct_to_workers=True), local
            return distributed.Client(spec.address, timeout=spec.timeout_s), None
        except BaseException as e:
            if local is not None:
                local.close()
            quiet.restore()
            if isinstance(e, OSError):
                raise ShardgenError(f"cannot reach the Dask scheduler {spec.name} within {spec.timeout_s:g} s "
                                    f"({short_error(e)})") from None
            if spec.local_workers is not None and isinstance(e, Exception) and not isinstance(e, ShardgenError):
                why = ": ".join(short_error(x) for x in _causes(e))
                raise ShardgenError(f"cannot start the Dask cluster {spec.name} ({why})") from None
            raise


def _causes(e: BaseException) -> list[BaseException]:
    """``e`` and the first exception in its chain that says why (Dask's assertions while it
    cleans up say nothing)."""
    x = e.__cause__ or e.__context__
    while x is not None and isinstance(x, AssertionError):
        x = x.__cause__ or x.__context__
    return [e] if x is None else [e, x]


def greeting(pool: Any, name: str) -> str:
    """The line for the user once connected: the workers and the dashboard's link."""
    link = pool.dashboard
    return (f"dask: {len(pool.workers())} worker(s) at {name}; dashboard: "
            + (link or "not served (pip install bokeh, and start the scheduler with its dashboard)"))


def _put_back(env: dict[str, str | None]) -> None:
    for k, v in env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
