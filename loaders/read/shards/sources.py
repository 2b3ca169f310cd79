"""Byte streams of shards: local files, and remote objects read in ranged chunks with
retries.

A source has ``read(n) -> bytes`` (short only at the end), ``skip(n)`` and
``close()``. :class:`RemoteSource` streams any fsspec URL (``s3://``, ``http(s)://``,
``gs://`` ...) in chunks of ``chunk_size`` bytes, fetching the next chunk in a
background thread while the current one is parsed; a failed chunk request is retried
with exponential backoff, starting again at the same byte, so a broken connection
costs one chunk, not the shard. With a ``cache_dir``, every byte that arrives is also
written to a temporary file (a :class:`~loaders.read.shards.cache.CacheWriter`), and the
file joins the cache only when its size and xxh64 match the manifest
(:mod:`loaders.read.shards.cache`).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from shardgen import retry
from shardgen.redact import redact

from ...errors import LoaderError
from .cache import CacheWriter
from .ranged import BodyTooLarge, read_range

__all__ = ["LocalSource", "RemoteSource", "prefetch_pool", "DEFAULT_CHUNK"]

log = logging.getLogger("loaders")

#: Bytes per ranged request when streaming a remote shard (8 MiB).
DEFAULT_CHUNK = 8 << 20


class LocalSource:
    """A shard on a local disk (seeks past what is skipped).

    Args:
        path: the file (ignored when ``file`` is given).
        name: the shard's name for messages (a redacted URL).
        expect_bytes: the manifest's size: a file of another size is an error at once.
        file: an open binary file to read instead of opening ``path`` (this takes it over).
    """

    def __init__(self, path: str, name: str, expect_bytes: int | None = None, file=None):
        self.name = name
        if file is not None:
            self._f = file
        else:
            try:
                self._f = open(path, "rb", buffering=1 << 20)
            except FileNotFoundError:
                raise LoaderError(f"{name}: shard file is missing ({path})") from None
            except OSError as e:
                raise LoaderError(f"{name}: cannot open shard: {e.strerror or e}") from None
        if expect_bytes is not None:
            size = os.fstat(self._f.fileno()).st_size
            if size != expect_bytes:
                self._f.close()
                raise LoaderError(f"{name}: shard is {size} bytes but the manifest says {expect_bytes}; "
                                  "it changed after the build (run shardgen verify)")

    def read(self, n: int) -> bytes:
        try:
            return self._f.read(n)
        except OSError as e:
            raise LoaderError(f"{self.name}: read failed: {e.strerror or e}") from None

    def skip(self, n: int) -> None:
        self._f.seek(n, os.SEEK_CUR)

    def close(self) -> None:
        self._f.close()


_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def prefetch_pool() -> ThreadPoolExecutor:
    """One small thread pool per process (rebuilt after a fork)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(max_workers=2, thread_name_prefix="loaders-prefetch"))
        return _pool[1]


class RemoteSource:
    """Stream one object through an fsspec filesystem in ranged chunks.

    Args:
        fs: the fsspec filesystem.
        path: the object's path as ``fs`` names it.
        size: its size in bytes (from the manifest).
        name: the shard's URL, for messages.
        chunk_size: bytes per request (default 8 MiB).
        retries: further attempts after a failed request (default 5); waits
            ``backoff * 2**k`` seconds (at most 8 s) before attempt ``k + 2``. What a
            retry cannot fix (:func:`shardgen.retry.is_transient`) fails at once.
        backoff: first wait in seconds (default 0.5).
        tee: a :class:`CacheWriter` that receives every byte, in order.
        prefetch: fetch the next chunk in a background thread (default true).
        timeout: the connect/read timeout ``fs`` was made with, in seconds (None: none).
            No retry starts later than ``2 * timeout`` after a chunk's first request, so
            a server that never answers costs about two timeouts, not ``retries + 1``.
    """

    def __init__(self, fs, path: str, size: int, name: str, chunk_size: int = DEFAULT_CHUNK,
                 retries: int = 5, backoff: float = 0.5, tee: CacheWriter | None = None,
                 prefetch: bool = True, timeout: float | None = None):
        self.fs, self.path, self.size, self.name = fs, path, int(size), name
        self.chunk = max(1, int(chunk_size))
        self.policy = retry.RetryPolicy.with_retries(retries, backoff, max_wait_s=8.0,
                                                     deadline_s=None if timeout is None else 2 * timeout)
        self.tee = tee
        self.prefetch = prefetch
        self.pos = 0
        self._buf = b""
        self._buf_start = 0
        self._fetched = 0          # bytes [0, _fetched) went through tee
        self._whole: bytes | None = None  # the server ignored Range and sent everything
        self._pending: tuple[int, Future] | None = None
        self.requests = 0

    # -- fetching ------------------------------------------------------------------
    def fetch(self, start: int, end: int) -> bytes:
        """Bytes ``start .. end-1`` of the object, in one request, retried under ``self.policy``."""
        if self._whole is not None:
            return self._whole[start:end]
        try:
            return retry.call(lambda: self._request(start, end), self.policy, on_retry=lambda e, n, wait_s: log.warning(
                "%s", redact(f"{self.name}: bytes {start}-{end}: {type(e).__name__}: {e}; "
                             f"retry {n}/{self.policy.retries} in {wait_s:.1f}s")))
        except BodyTooLarge as e:
            raise LoaderError(f"{self.name}: bytes {start}-{end}: {e}; cut off (a server that ignores ranges, "
                              "or not the shard the manifest describes)") from None
        except Exception as e:  # network errors come in many types (aiohttp, botocore, OSError)
            what = ("no answer within the timeout" if retry.timed_out(e) else
                    f"reading bytes {start}-{end} failed after {self.policy.attempts} attempts"
                    if retry.is_transient(e) else "cannot read shard")
            detail = " ".join(str(e).split()) or "(no message)"
            raise LoaderError(redact(f"{self.name}: {what}: {type(e).__name__}: {detail}")) from None

    def _request(self, start: int, end: int) -> bytes:
        """One ranged request, never holding more than the range, or the whole object of
        its declared size from a server that ignores ranges (a short answer is an error,
        so that it is retried)."""
        self.requests += 1
        data = read_range(self.fs, self.path, start, end, self.size)
        if len(data) == end - start:
            return data
        if len(data) == self.size:
            # No Range support: keep the whole object and serve everything from it.
            self._whole = bytes(data)
            return self._whole[start:end]
        raise OSError(f"short read: got {len(data)} bytes, asked for {end - start}")

    def _get(self, start: int) -> bytes:
        return self.fetch(start, min(self.size, start + self.chunk))

    def _load(self, start: int) -> None:
        """Make the chunk starting at byte ``start`` the buffer (and start fetching the next)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == start:
            data = pending[1].result()
        else:
            if pending is not None:
                pending[1].cancel()
            data = self._get(start)
        if self.tee is not None and start == self._fetched:
            self.tee.write(data)
            self._fetched = start + len(data)
        self._buf, self._buf_start = data, start
        nxt = start + len(data)
        if self.prefetch and nxt < self.size and data:
            self._pending = (nxt, prefetch_pool().submit(self._get, nxt))

    def _ensure(self, pos: int) -> bool:
        if self._buf_start <= pos < self._buf_start + len(self._buf):
            return True
        if pos >= self.size:
            return False
        if self.tee is not None:  # the cache copy needs every byte, in order
            while not (self._buf_start <= pos < self._buf_start + len(self._buf)):
                if self._fetched >= self.size:
                    return False
                self._load(self._fetched)
            return True
        self._load(pos)
        return bool(self._buf)

    # -- the stream interface -------------------------------------------------------------
    def read(self, n: int) -> bytes:
        parts = []
        while n > 0 and self._ensure(self.pos):
            off = self.pos - self._buf_start
            piece = self._buf[off:off + n]
            parts.append(piece)
            self.pos += len(piece)
            n -= len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, n: int) -> None:
        self.pos = min(self.size, self.pos + n)

    def seek(self, pos: int, have: tuple[int, bytes] | None = None) -> None:
        """Continue reading at byte ``pos`` (not while teeing into the cache).

        ``have``: ``(start, data)`` already fetched around ``pos``, used as the buffer.
        """
        if self.tee is not None:
            raise ValueError("cannot seek a stream that is being cached")
        self.pos = max(0, min(self.size, int(pos)))
        if have is not None and have[0] <= self.pos < have[0] + len(have[1]):
            self._buf, self._buf_start = have[1], have[0]
            nxt = have[0] + len(have[1])
            if self.prefetch and nxt < self.size and self._pending is None:
                self._pending = (nxt, prefetch_pool().submit(self._get, nxt))

    def finish(self) -> None:
        """Read what is left of the object (so that the cache copy is complete)."""
        if self.tee is None:
            return
        while self._fetched < self.size:
            self._load(self._fetched)

    def close(self) -> None:
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        self._buf = b""
        self._whole = None
