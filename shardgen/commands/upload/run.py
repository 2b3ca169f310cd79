"""The steps of :func:`upload`, in the order the package docstring gives."""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, TypeVar

from ... import retry
from ...format import MANIFEST
from ...progress import bar
from ...progress import note as progress_note
from ...storage import parse_storage_options
from ...storage.scrub import Scrubber, display_url, short
from .dest import TMP_RE, Dest
from .guard import MARKER, decide, index_files, marker_bytes
from .local import LocalBuild, Shard, local_build, verify_local
from .result import UploadFailed, UploadInterrupted, UploadResult

__all__ = ["upload"]

T = TypeVar("T")
_RESUME = "re-run the same command to resume (finished shards are skipped)"


class _Mismatch(Exception):
    """The object read back does not match the local shard (retried: sent again)."""


class _Transfers:
    """Runs destination operations under the upload's retry policy, counting and reporting retries."""

    def __init__(self, d: Dest, policy: retry.RetryPolicy, note: Callable[[str], None], result: UploadResult,
                 scrub: Scrubber):
        self.d, self.policy, self.note, self.result, self.scrub = d, policy, note, result, scrub
        self.lock = threading.Lock()  # guards result's counters and the progress bar

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()`` with retries; ``what`` names the object in messages.

        Raises:
            UsageError: an error a retry cannot fix (access, missing bucket, ...).
            UploadFailed: a transient error outlasted every retry.
        """
        def on_retry(e: BaseException, n: int, wait_s: float) -> None:
            with self.lock:
                self.result.retries += 1
            self.note(self.scrub(f"shardgen upload: {what}: {short(e)}; retry {n}/{self.policy.retries} "
                                 f"in {wait_s:.1f} s"))

        try:
            return retry.call(fn, self.policy, on_retry=on_retry)
        except Exception as e:  # noqa: BLE001 - classified below
            if not retry.is_transient(e):
                raise self.d.fail(e, f"transferring {what}") from None
            n, endpoint = self.policy.attempts, self.d.unreachable_endpoint(e)
            if endpoint:
                raise UploadFailed(self.scrub(f"{what}: cannot reach {endpoint} after {n} attempts; {_RESUME}")) from None
            raise UploadFailed(self.scrub(f"{what}: {short(e)} (after {n} attempts); {_RESUME}")) from None


class _Bytes:
    """An fsspec callback that moves a shared progress bar and can take its bytes back."""

    def __init__(self, b, lock: threading.Lock):
        import fsspec.callbacks

        outer = self

        class CB(fsspec.callbacks.Callback):
            def call(self, *args, **kwargs):  # noqa: D401 - fsspec hook
                return None

            def relative_update(self, inc=1):
                outer.add(int(inc))

        self.bar, self.lock, self.done = b, lock, 0
        self.callback = CB()

    def add(self, n: int) -> None:
        if n:
            with self.lock:
                self.done += n
                self.bar.update(n)

    def settle(self, total: int) -> None:
        """The transfer finished: count what the backend did not report."""
        self.add(total - self.done)

    def undo(self) -> None:
        self.add(-self.done)


def upload(out: str, dest: str, *, endpoint_url: str | None = None, workers: int = 8,
           storage_options: dict[str, Any] | str | None = None, overwrite: bool = False,
           progress: bool = True, retries: int = 5, backoff: float = 1.0,
           log: Callable[[str], None] | None = None) -> UploadResult:
    """Upload the finished build in ``out`` to ``dest`` (``s3://bucket/prefix``, any fsspec URL, a folder).

    Args:
        out: local build folder (or its ``manifest.json``).
        dest: where the build goes; its files keep their relative paths under it.
        endpoint_url: S3 endpoint (e.g. ``http://127.0.0.1:8333``); beats one in
            ``storage_options`` and the environment (``AWS_ENDPOINT_URL_S3``, then
            ``AWS_ENDPOINT_URL``); default AWS itself.
        workers: shards in flight at once (threads).
        storage_options: extra fsspec options (dict or JSON text), e.g. ``{"profile": "x"}``.
        overwrite: replace a different build already at ``dest``; also needed for a
            destination that holds files but no shardgen manifest (only the build's own
            names are written over).
        progress: progress bars (bytes) on stderr.
        retries: further attempts after a transient error, per operation.
        backoff: first wait in seconds; doubles per attempt (capped at 30 s, with jitter).
        log: where one-line notes go (retries, replaced manifest); default stderr.

    Raises:
        UsageError: OUT is not a finished, intact build; the destination cannot be used
            (unreachable endpoint, bad credentials, missing bucket); without ``overwrite``:
            a different build is there, another build's unfinished upload, or files that
            are not a shardgen build (exit code 2).
        UploadFailed: a transfer kept failing after all retries (exit code 1; re-run to resume).
    """
    t0 = time.monotonic()
    opts = parse_storage_options(storage_options)
    scrub = Scrubber(opts)
    workers = max(1, int(workers))
    build = local_build(out)
    result = UploadResult(out=build.src, dest=display_url(str(dest)), shards=len(build.shards))

    # Cheap destination checks first (endpoint, credentials, bucket, a different build there),
    # then the local shards' checksums, then the transfers.
    d = Dest(str(dest), opts, endpoint_url, scrub)
    existing = d.listing()
    policy = retry.RetryPolicy.with_retries(retries, backoff, max_wait_s=30.0, jitter=True)
    t = _Transfers(d, policy, log or progress_note, result, scrub)
    plan = decide(result.dest, existing, build.manifest_bytes, overwrite, d.local,
                  lambda rel, cap: t.call(rel, lambda: d.read(rel, cap)))
    verify_local(build.src, build.shards, workers, progress)
    if plan.mark:  # before anything else: a re-run knows the unfinished upload is its own
        t.call(MARKER, lambda: d.put_bytes(marker_bytes(build.manifest_bytes), MARKER))
    if plan.replace:
        _unpublish(t, existing)
    _send_shards(t, build.shards, existing, workers, progress)
    _remove_leftovers(t, build, existing)
    _write_files(t, build, existing)
    if plan.mark or MARKER in existing:
        t.call(MARKER, lambda: d.remove(MARKER))
    result.seconds = time.monotonic() - t0
    return result


def _unpublish(t: _Transfers, existing: dict[str, int]) -> None:
    """Take the build at the destination down before its shards are replaced: ``manifest.json``
    first, then its per-split indexes (readers now see no build, a clear error, until the new
    manifest lands)."""
    if MANIFEST in existing:
        t.call(MANIFEST, lambda: t.d.remove(MANIFEST))
        existing.pop(MANIFEST, None)
        t.result.replaced_manifest = True
        t.note(f"shardgen upload: removed the old {MANIFEST} at {t.result.dest} before replacing its build")
    for rel in index_files(existing):
        t.call(rel, lambda rel=rel: t.d.remove(rel))
        existing.pop(rel, None)


def _send_shards(t: _Transfers, shards: list[Shard], existing: dict[str, int], workers: int,
                 progress: bool) -> None:
    """Send every shard that is not already there (``workers`` at a time), each checked after."""
    result, lock, stop = t.result, t.lock, threading.Event()
    todo_bytes = sum(s.bytes for s in shards if existing.get(s.rel) != s.bytes)
    with bar(todo_bytes, "upload", enabled=progress, byte_units=True) as b:
        def sync(s: Shard) -> None:
            if stop.is_set():
                return
            same_size = existing.get(s.rel) == s.bytes
            if same_size and t.call(s.rel, lambda: _matches(t.d, s)):
                with lock:
                    result.skipped += 1
                    result.bytes_skipped += s.bytes
                return
            if same_size:  # same size but different bytes: not in the bar's total yet
                with lock:
                    b.total += s.bytes
                    b.refresh()
            t.call(s.rel, lambda: _send(t.d, s, b, lock))
            with lock:
                result.sent += 1
                result.bytes_sent += s.bytes
                result.sent_paths.append(s.rel)

        _in_threads(sync, shards, workers, stop)
    result.sent_paths.sort()


def _in_threads(fn: Callable[[Shard], None], shards: list[Shard], workers: int, stop: threading.Event) -> None:
    """``fn`` over ``shards`` in a thread pool; the first error (or Ctrl-C) stops the rest.

    Raises:
        UploadInterrupted: Ctrl-C.
    """
    ex = ThreadPoolExecutor(max_workers=min(workers, len(shards) or 1), thread_name_prefix="upload")
    try:
        futures = [ex.submit(fn, s) for s in shards]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            if f.done() and f.exception() is not None:
                stop.set()
                for g in futures:
                    g.cancel()
                raise f.exception()
    except KeyboardInterrupt:
        stop.set()
        ex.shutdown(wait=False, cancel_futures=True)
        raise UploadInterrupted(
            f"interrupted; {MANIFEST} was not written, so readers see no new build; re-run the same "
            f"command to resume (shards already there are skipped)"
        ) from None
    except BaseException:
        stop.set()
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def _remove_leftovers(t: _Transfers, build: LocalBuild, existing: dict[str, int]) -> None:
    """Delete shards of the listed splits that the manifest does not list (an earlier build's),
    and the temporary files of a killed run into a local folder."""
    listed = {s.rel for s in build.shards}
    for split in build.manifest.splits:
        pat = re.compile(rf"^{re.escape(split)}/{re.escape(split)}-\d{{6}}\.tar$")
        for rel in sorted(existing):
            if pat.match(rel) and rel not in listed:
                t.call(rel, lambda rel=rel: t.d.remove(rel))
                t.result.stale_removed += 1
    for rel in sorted(existing):
        if t.d.local and TMP_RE.match(rel.rsplit("/", 1)[-1]):
            t.call(rel, lambda rel=rel: t.d.remove(rel))


def _write_files(t: _Transfers, build: LocalBuild, existing: dict[str, int]) -> None:
    """The small files (each read back), then the manifest last."""
    for rel in build.files + [MANIFEST]:
        if rel == MANIFEST:
            data = build.manifest_bytes
        else:
            with open(os.path.join(build.src, *rel.split("/")), "rb") as f:
                data = f.read()
        if t.call(rel, lambda: _put_small(t.d, rel, data, rel in existing)):
            t.result.files_written += 1
        else:
            t.result.files_unchanged += 1


def _matches(d: Dest, s: Shard) -> bool:
    """Is the object already there the same as the local shard (size checked by the caller)?"""
    try:
        stored = d.stored_digest(s.rel)
        if stored is not None:
            return stored == s.xxh64
        digest, n = d.digest(s.rel)
    except FileNotFoundError:  # gone since the listing
        return False
    return digest == s.xxh64 and n == s.bytes


def _send(d: Dest, s: Shard, b, lock: threading.Lock) -> None:
    """Send one shard, then check its size (fresh stat) and xxh64 (read back); a mismatch deletes it."""
    cb = _Bytes(b, lock)
    try:
        d.put_file(s.local, s.rel, s.xxh64, cb.callback)
        cb.settle(s.bytes)
        size = d.size(s.rel)
        if size != s.bytes:
            raise _Mismatch(f"{s.rel}: the stored object is {size} bytes after upload, expected {s.bytes}")
        digest, n = d.digest(s.rel)
        if digest != s.xxh64 or n != s.bytes:
            raise _Mismatch(f"{s.rel}: the stored object reads back with xxh64 {digest}, expected {s.xxh64}")
    except BaseException as e:
        cb.undo()
        if isinstance(e, _Mismatch):
            try:
                d.remove(s.rel)
            except Exception:  # noqa: BLE001 - the next attempt overwrites it anyway
                pass
        raise


def _put_small(d: Dest, rel: str, data: bytes, exists: bool) -> bool:
    """Write a small file unless identical bytes are there; read back to confirm. True if written."""
    if exists and d.read(rel, len(data) + 1) == data:
        return False
    d.put_bytes(data, rel)
    d.fs.invalidate_cache(d.path(rel))
    back = d.read(rel)
    if back != data:
        raise _Mismatch(f"{rel}: reads back different from what was written")
    return True
