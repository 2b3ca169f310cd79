"""A build's Dask cluster, started while the client does its own first work (``build --scheduler``).

A ``local:N`` cluster takes one to two seconds to start: importing ``distributed``, the
scheduler and its dashboard, and N spawned worker processes importing theirs. The client's
own work before its first task (the scan of SRC, classes and splits, the keys) needs none
of it, so :func:`start` begins the cluster in a thread once the arguments are known to be
valid, and :meth:`Starting.wait` joins it where the build first needs the workers (the
check that they see SRC), which is still before any task runs; the workers' versions are
checked in that thread, as :func:`~shardgen.engines.dask.connect` does.

Whatever ends the build before that (an error found by the scan, Ctrl-C), :meth:`Starting.close`
leaves nothing running: a cluster still starting is closed by its thread as soon as it is up,
and ``close`` waits for that (the thread is not a daemon: an interpreter that exits meanwhile
waits for it too). A scheduler given by address (``tcp://``) is reached at once, as before:
an unreachable one is refused before any work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import threading
import time
from typing import Any, Iterator

from ..errors import UsageError

__all__ = ["Starting", "start"]


class Starting:
    """The build's :class:`~shardgen.engines.dask.DaskPool`, ready or still being started.

    Args:
        spec: the :class:`~shardgen.engines.dask.Cluster`.
        max_pixels: Pillow's limit in the workers (:class:`~shardgen.engines.dask.DaskPool`).
    """

    def __init__(self, spec: Any, max_pixels: int) -> None:
        from .dask import connect

        self._spec, self._lock, self._closed = spec, threading.Lock(), False
        self._pool: Any = None
        self._error: BaseException | None = None
        self._line: str | None = None
        self._thread: threading.Thread | None = None
        if spec.local_workers is None:
            self._pool = connect(spec, max_pixels)  # unreachable, or other library versions: before any work
            return
        if importlib.util.find_spec("distributed") is None:
            from .dask_setup import NEED_DASK

            raise UsageError(NEED_DASK)
        self._thread = threading.Thread(target=self._start, args=(connect, max_pixels), name="shardgen-dask-start")
        with _sigint_ignored_until_spawned(self._thread, spec.local_workers, spec.timeout_s):
            self._thread.start()

    def _start(self, connect: Any, max_pixels: int) -> None:
        """The thread: start the cluster, check its workers; keep it, or close it if the build has ended."""
        from .dask_setup import greeting

        pool = None
        try:
            pool = connect(dataclasses.replace(self._spec, log=None), max_pixels)
            line = greeting(pool, self._spec.name) if self._spec.log is not None else None
        except BaseException as e:  # noqa: BLE001 - raised again by wait()
            if pool is not None:
                pool.shutdown()
            self._error = e
            return
        with self._lock:
            keep = not self._closed
            if keep:
                self._pool, self._line = pool, line
        if not keep:
            pool.shutdown()

    def wait(self) -> Any:
        """The connected :class:`~shardgen.engines.dask.DaskPool`, once the cluster is up and its workers
        checked; the dashboard's line goes to ``spec.log`` here, in the caller's thread.

        Raises:
            UsageError: a worker's versions differ.
            ShardgenError: the cluster did not start (one line).
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                err, self._error = self._error, None
                raise err
            if self._line is not None:
                self._spec.log(self._line)
        return self._pool

    def close(self) -> None:
        """Close the cluster (and the client), waiting for one still starting; safe to call again."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown()
        if self._thread is not None:
            self._thread.join()  # a cluster still starting: its thread closes it once it is up


@contextlib.contextmanager
def _sigint_ignored_until_spawned(thread: threading.Thread, n: int, timeout_s: float) -> Iterator[None]:
    """Ctrl-C ignored in this process until ``thread`` has spawned ``n`` processes (or ended, or
    ``timeout_s`` passed), so that the workers start with SIGINT ignored: a terminal's Ctrl-C goes
    to the whole process group, and a worker still importing ``distributed`` would print a
    traceback. About half a second (``import distributed``, the scheduler and its dashboard);
    the caller's handler is then put back, and the workers boot while the client scans SRC.
    Only in the main thread of a POSIX process (elsewhere the workers' preload ignores it, once
    it runs: :func:`shardgen.engines.dask_tasks.dask_setup`)."""
    import multiprocessing
    import os
    import signal

    if os.name != "posix" or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = set(multiprocessing.active_children())
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
        deadline = time.monotonic() + timeout_s
        while thread.is_alive() and time.monotonic() < deadline:
            # A child is listed once forked; it keeps SIG_IGN through its exec.
            if len(set(multiprocessing.active_children()) - before) >= n:
                break
            thread.join(0.01)
    finally:
        signal.signal(signal.SIGINT, old)


def start(spec: Any, max_pixels: int) -> Starting:
    """Connect to ``spec``'s scheduler now, or begin its local cluster in the background.

    Raises:
        UsageError: ``distributed`` is not installed; a running cluster's worker has other versions.
        ShardgenError: a scheduler given by address cannot be reached.
    """
    return Starting(spec, max_pixels)
