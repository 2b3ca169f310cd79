"""Run a build's conversion and shard tasks on a Dask cluster (``build --scheduler``).

:class:`DaskPool` has the part of :class:`multiprocessing.pool.Pool`'s interface the build
uses (``imap_unordered``, ``close``, ``terminate``, ``join``), so the build's phases do not
know where their tasks run. The tasks are the same picklable :class:`~shardgen.build.convert.ChunkTask`
and :class:`~shardgen.build.assemble.ShardTask` calls the local build makes, each writing its
files atomically under their final names: a task that Dask runs twice (its worker died)
writes the same bytes again, so the output is byte-identical whatever the cluster does.

Before any task runs, every worker's library versions (:mod:`shardgen.imaging.codecs`) are
compared with the client's, and the workers must see the build's scratch folder (a
probe file the client writes, read back by each worker). ``distributed`` is imported only
here, only when ``--scheduler`` is given.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

from .. import __version__
from ..errors import ShardgenError, UsageError
from ..format import TMP_PREFIX, CodecVersions
from ..imaging.codecs import codec_versions
from .dask_setup import NEED_DASK, QuietLogs, greeting, open_client
from .dask_tasks import batches, file_size, probe_worker, run_batch, short_error, worker_versions
from .pool import Batching

__all__ = ["Cluster", "DaskPool", "parse_scheduler", "connect", "DEFAULT_CONNECT_TIMEOUT_S"]

#: Seconds to reach the scheduler (and, later, to notice that it went away).
DEFAULT_CONNECT_TIMEOUT_S = 20.0
#: How often the client checks that the scheduler is still there while it waits for tasks (seconds).
_POLL_S = 1.0
#: Seconds without a finished task after which the client checks that the scheduler still answers.
_PING_AFTER_S = 5.0
_ADDRESS_RE = re.compile(r"^(tcp|tls|ucx|ws|wss)://[^\s/:]+:\d{1,5}/?$")


@dataclass(frozen=True)
class Cluster:
    """Where a build's tasks run: a running scheduler, or a local cluster started for the build.

    Attributes:
        address: the scheduler, ``tcp://host:port`` (None for a local cluster).
        local_workers: worker processes of a ``distributed.LocalCluster`` (1 thread each).
        timeout_s: seconds to connect, and to wait for a lost scheduler before giving up.
        log: called with one line for the user (the dashboard link); None: not shown.
        preload: modules each worker of a local cluster imports as it starts, while the client
            scans SRC (the modules of the tasks it will run), instead of in its first task.
    """

    address: str | None = None
    local_workers: int | None = None
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    log: Callable[[str], None] | None = None
    preload: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.address or f"local:{self.local_workers}"


def parse_scheduler(value: Any, log: Callable[[str], None] | None = None) -> Cluster:
    """``--scheduler``: ``tcp://host:port`` or ``local:N`` (N worker processes on this machine).

    Raises:
        UsageError: anything else.
    """
    s = str(value).strip()
    if s.startswith("local:"):
        n = s[len("local:"):]
        if not n.isdigit() or not 1 <= int(n) <= 1024:
            raise UsageError(f"--scheduler local:N needs a worker count from 1 to 1024, got {s!r}")
        return Cluster(local_workers=int(n), log=log)
    if not _ADDRESS_RE.match(s):
        raise UsageError(f"--scheduler must be a Dask scheduler address like tcp://host:8786, or local:N; got {s!r}")
    return Cluster(address=s.rstrip("/"), log=log)


# ---- the client side ---------------------------------------------------------------------------------


class DaskPool:
    """A Dask client in the shape of the build's worker pool.

    Args:
        client: a connected ``distributed.Client``.
        local: the ``LocalCluster`` it owns (closed with it), or None.
        max_pixels: Pillow's limit, set in the worker before each task.
        name: how errors name the scheduler.
        timeout_s: how long a lost scheduler is waited for.
    """

    def __init__(self, client: Any, local: Any, max_pixels: int, name: str, timeout_s: float,
                 quiet: "QuietLogs") -> None:
        self.client, self.local, self.max_pixels, self.name, self.timeout_s = client, local, max_pixels, name, timeout_s
        self.codecs = codec_versions().to_json()
        self._futures: set[Any] = set()
        self._checked = 0.0
        self._last_answer = time.monotonic()
        self._lost_since: float | None = None
        #: the build folder, for messages (set by the build)
        self.out = "the build folder"
        self._quiet = quiet

    @property
    def dashboard(self) -> str | None:
        """The dashboard's URL, None when the scheduler serves none."""
        try:
            services = self.client.scheduler_info().get("services") or {}
        except Exception:
            return None
        if "dashboard" not in services:
            return None
        link = self.client.dashboard_link
        if self.local is not None:
            return link  # started here, with its dashboard (fetching the page costs the scheduler 0.3 s of CPU)
        # A scheduler started with --no-dashboard still serves /health and /metrics on that port.
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(link, timeout=2).close()
        except urllib.error.HTTPError as e:
            return None if e.code == 404 else link
        except (OSError, ValueError):
            pass  # not reachable from here (another network): the link is still the scheduler's
        return link

    def workers(self) -> list[str]:
        return sorted(self.client.scheduler_info().get("workers") or {})

    def check_workers(self) -> None:
        """Refuse workers whose shardgen or library versions differ from the client's (before any task).

        Raises:
            UsageError: one line naming the library, the worker and both versions.
        """
        from ..imaging.codecs import check_same_codecs

        try:
            got = self.client.run(worker_versions, on_error="return")
        except Exception as e:  # noqa: BLE001 - anything the transport raises
            raise ShardgenError(f"Dask scheduler {self.name}: cannot ask the workers ({short_error(e)})") from None
        mine = codec_versions()
        for worker, v in sorted(got.items()):
            if isinstance(v, BaseException):
                raise UsageError(f"Dask worker {worker} cannot run shardgen ({short_error(v)}); install shardgen "
                                 f"{__version__} and its pinned libraries on every worker")
            if v["shardgen"] != __version__:
                raise UsageError(f"Dask worker {worker} has shardgen {v['shardgen']}, the client has {__version__}")
            check_same_codecs(mine, CodecVersions.parse(v["codecs"]),
                              f"Dask worker {worker} has {{lib}} {{got}}, the client has {{lib}} {{expected}}: "
                              "the same inputs could give other bytes; install the same versions everywhere")

    def check_reach(self, folder: str, what: str, loc: Any = None) -> None:
        """Every worker must read a probe file the client writes in ``folder``, and write there.

        Args:
            folder: a folder of the build (its scratch folder).
            what: how messages name it (``"OUT"``).
            loc: the :class:`~shardgen.storage.location.Location` of ``folder`` when it is a URL.

        Raises:
            UsageError: a worker does not see it (OUT is a local path of the client's machine,
                or another machine's folder of the same name).
        """
        token = secrets.token_hex(16)
        name = f"{TMP_PREFIX}probe-{token[:8]}"
        if loc is not None:
            from ..storage.io import put_atomic

            fs, path = loc.fs(), loc.join(name)
            put_atomic(fs, path, token.encode())
        else:
            fs, path = None, os.path.join(os.path.abspath(folder), name)
            with open(path, "w") as f:
                f.write(token)
        try:
            got = self.client.run(probe_worker, path, token, loc, on_error="return")
        finally:
            with contextlib.suppress(Exception):
                fs.rm(path) if fs is not None else os.unlink(path)
        for worker, why in sorted(got.items()):
            if why is not None:
                why = short_error(why) if isinstance(why, BaseException) else why
                raise UsageError(f"{what} {folder} is not reachable from Dask worker {worker} ({why}): "
                                 "use a folder every worker shares with this machine, or an s3:// URL")

    def check_source(self, paths: list[str], what: str, loc: Any = None) -> None:
        """Every worker must see a source file with the size the client sees.

        Args:
            paths: candidate source files; the first one the client can stat is used (none: no check).
            what: how messages name SRC.
            loc: the :class:`~shardgen.storage.location.Location` of SRC when it is a URL.

        Raises:
            UsageError: a worker cannot read it (SRC is a local path of the client's machine).
        """
        for path in paths:
            try:
                want = int(loc.fs().size(path)) if loc is not None else os.stat(path).st_size
                break
            except OSError:
                continue
        else:
            return  # the client reads none of them either: the build reports them as unreadable
        got = self.client.run(file_size, path if loc is not None else os.path.abspath(path), loc, on_error="return")
        for worker, size in sorted(got.items()):
            if size != want:
                why = short_error(size) if isinstance(size, BaseException) else (
                    size if isinstance(size, str) else f"{size} bytes there, {want} here")
                raise UsageError(f"{what} is not reachable from Dask worker {worker} ({why}): use a folder "
                                 "every worker shares with this machine, or an s3:// URL")

    def imap_unordered(self, fn: Callable, jobs: Iterable[Any]) -> Iterator[Any]:
        """``fn(job)`` for every job, as Dask tasks of a few jobs each; results in completion order.

        At most ``fn.batching.ahead_per_slot`` tasks per worker thread are submitted ahead of the finished ones:
        the scheduler holds a window of the build's jobs, not all of them (a 10-million-image
        build has 156,000 chunks), and a task is submitted the moment a slot frees.

        Raises:
            ShardgenError: the scheduler went away (after ``timeout_s``), or every try of a task failed.
        """
        from distributed import as_completed

        slots = self.slots()
        jobs = jobs if hasattr(jobs, "__len__") else list(jobs)
        # Task keys "shardgen-convert-<token>-<n>" / "shardgen-shards-<token>-<n>": the dashboard groups them
        # by the part before the token; the token keeps runs apart on a shared scheduler.
        how: Batching = fn.batching
        groups = batches(jobs, len(jobs), slots, how.most_per_task)
        prefix = f"shardgen-{how.phase}-{secrets.token_hex(8)}"
        window, ac, self._futures = how.ahead_per_slot * slots, as_completed([], with_results=False), set()
        sent = self._submit(fn, groups, prefix, 0, window, ac)
        while self._futures:
            batch = ac.next_batch(block=False)
            if not batch:
                self._check_alive()
                time.sleep(0.05)
                continue
            self._last_answer = time.monotonic()
            self._futures.difference_update(batch)
            if len(self._futures) <= window // 2:  # the workers' next tasks before this batch's results
                sent = self._submit(fn, groups, prefix, sent, sent + window - len(self._futures), ac)
            for results in self._results(batch):
                yield from results
            self._check_alive()

    def _submit(self, fn: Callable, groups: Iterator[list], prefix: str, start: int, stop: int, ac: Any) -> int:
        """Submit the next ``stop - start`` batches of ``groups`` as tasks ``prefix-<start>``...;
        returns how far it got."""
        batch = list(islice(groups, max(0, stop - start)))
        if not batch:
            return start
        stop = start + len(batch)
        futs = self.client.map(run_batch, [fn] * len(batch), batch, max_pixels=self.max_pixels,
                               codecs=self.codecs, key=[f"{prefix}-{i}" for i in range(start, stop)], pure=False)
        self._futures.update(futs)
        ac.update(futs)
        return stop

    def slots(self) -> int:
        """The cluster's worker threads now (at least 1)."""
        try:
            infos = (self.client.scheduler_info().get("workers") or {}).values()
            return max(1, sum(int(w.get("nthreads") or 1) for w in infos))
        except Exception:  # noqa: BLE001 - only a batch size depends on it
            return 1

    def _results(self, futs: list) -> list:
        """The finished tasks' results (each a list of the build's results); a task's own exception
        (a full disk on the worker) passes through as it was raised there."""
        from distributed.comm import CommClosedError

        try:
            for fut in futs:
                if fut.status == "error":
                    return fut.result()  # raises the task's exception
                if fut.status == "cancelled":
                    raise self._lost()
            return [fut.result(timeout=self.timeout_s) for fut in futs]
        except (CommClosedError, TimeoutError) as e:
            raise self._lost() from e
        except Exception as e:
            if type(e).__name__ in ("CancelledError", "FutureCancelledError"):
                raise self._lost() from e
            raise
        finally:
            for fut in futs:
                with contextlib.suppress(Exception):
                    fut.release()

    def _ping(self) -> None:
        """No task finished for a while: the scheduler must still answer (a stopped one does not)."""
        from distributed.comm import CommClosedError
        try:
            self.client.sync(self.client.scheduler.identity, callback_timeout=self.timeout_s)
        except (CommClosedError, TimeoutError, OSError) as e:
            raise self._lost() from e
        self._last_answer = time.monotonic()

    def _lost(self) -> ShardgenError:
        return ShardgenError(f"lost the Dask scheduler {self.name}; {self.out} can be resumed: "
                             "run the same command again")

    def _check_alive(self) -> None:
        """Raise when the client has been disconnected from the scheduler for ``timeout_s``."""
        now = time.monotonic()
        if now - self._checked < _POLL_S:
            return
        self._checked = now
        comm = self.client.scheduler_comm
        if self.client.status == "running" and comm is not None and not comm.closed():
            self._lost_since = None
            if now - self._last_answer > _PING_AFTER_S:
                self._ping()
            return
        self._lost_since = self._lost_since or now
        if now - self._lost_since > self.timeout_s or self.client.status in ("closed", "closing", "failed"):
            raise self._lost()

    def close(self) -> None:
        """Nothing to wait for: every task's result was collected."""

    def terminate(self) -> None:
        """Cancel the tasks not yet finished (best effort: the scheduler may be gone)."""
        futs, self._futures = list(self._futures), set()
        if futs:
            with contextlib.suppress(Exception):
                self.client.cancel(futs, force=True, asynchronous=False)

    def join(self) -> None:
        """Nothing to join: the workers belong to the cluster."""

    def shutdown(self) -> None:
        """Close the client, and the local cluster if this pool started one."""
        self.terminate()
        with contextlib.suppress(Exception):
            self.client.close(timeout=min(self.timeout_s, 10))
        if self.local is not None:
            with contextlib.suppress(Exception):
                self.local.close(timeout=min(self.timeout_s, 10))
        self._quiet.restore()


def connect(spec: Cluster, max_pixels: int) -> DaskPool:
    """Connect to the scheduler (or start the local cluster) and check the workers' versions.

    Raises:
        UsageError: ``distributed`` is not installed; a worker's versions differ.
        ShardgenError: the scheduler cannot be reached within ``spec.timeout_s``; the local cluster
            does not start.
    """
    try:
        import distributed
    except ImportError:
        raise UsageError(NEED_DASK) from None
    quiet = QuietLogs()
    client, local = open_client(distributed, spec, quiet)
    pool = DaskPool(client, local, max_pixels, spec.name, spec.timeout_s, quiet)
    try:
        if spec.local_workers is None and not pool.workers():
            client.wait_for_workers(1, timeout=spec.timeout_s)
        pool.check_workers()
    except BaseException as e:
        pool.shutdown()
        if isinstance(e, (TimeoutError, OSError)) and not isinstance(e, UsageError):
            raise ShardgenError(f"Dask scheduler {spec.name}: no worker joined within {spec.timeout_s:g} s") from None
        raise
    if spec.log is not None:
        spec.log(greeting(pool, spec.name))
    return pool
