"""Reading and writing single objects on any fsspec filesystem, with as few requests as possible.

On an object store (S3, GCS, Azure) an object becomes visible whole or not at all when its one
PUT (or its multipart upload) completes, so :func:`put_atomic` writes it with one PUT under its
final name; elsewhere (a local folder, SFTP, ...) under a temporary name (``.tmp-<random>-<name>``,
the format's :data:`~shardgen.format.TMP_PREFIX`) that is then moved. :func:`read_object` reads a
whole object with one GET (s3fs would otherwise ask for its size first).
"""

from __future__ import annotations

import secrets
from typing import Any

from ..format import TMP_PREFIX
from ..retry import RetryPolicy, call
from .protocols import capabilities

__all__ = ["put_atomic", "put_file_atomic", "put_scratch", "put_scratch_pair", "single_get", "read_object",
           "read_or_none", "STORAGE_RETRY", "retried", "write_via_temporary"]

#: A build's reads and writes of objects: a transient error (a 500 or 503, a dropped
#: connection, a timeout) is tried again 3 times, 0.5, 1 and 2 s later (jittered), and none
#: is started 30 s after the first try. s3fs itself retries only throttling and transport
#: errors, and botocore's own retries are off (``storage.timeout_options``).
STORAGE_RETRY = RetryPolicy(attempts=4, backoff_s=0.5, max_wait_s=4.0, jitter=True, deadline_s=30.0)


def retried(fn: Any) -> Any:
    """``fn()`` under :data:`STORAGE_RETRY` (transient errors only, :func:`shardgen.retry.is_transient`)."""
    return call(fn, STORAGE_RETRY)


def put_atomic(fs: Any, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: one PUT on an object store (visible whole or not
    at all), else under a temporary name, then moved to ``path``; transient errors are
    retried (:func:`retried`)."""
    if capabilities(fs).atomic_put:
        retried(lambda: fs.pipe_file(path, data))
    else:
        retried(lambda: write_via_temporary(fs, path, lambda tmp: fs.pipe_file(tmp, data)))


def put_file_atomic(fs: Any, local: str, path: str) -> None:
    """Upload the local file ``local`` to ``path`` atomically (as :func:`put_atomic`; a large
    file's multipart upload is visible only once complete)."""
    if capabilities(fs).atomic_put:
        retried(lambda: fs.put_file(local, path))
    else:
        retried(lambda: write_via_temporary(fs, path, lambda tmp: fs.put_file(local, tmp)))


def put_scratch(fs: Any, path: str, data: bytes) -> None:
    """Write a scratch object (a chunk, its records, a shard's journal): :func:`put_atomic`."""
    put_atomic(fs, path, data)


def put_scratch_pair(fs: Any, first: tuple[str, bytes], second: tuple[str, bytes]) -> None:
    """Write two scratch objects, ``(path, data)`` each: both at once on an object store (one
    round trip; a chunk's records name its ``.bin``'s xxh64, so records that arrive without
    their ``.bin`` are never trusted), else ``first`` and then ``second``."""
    if capabilities(fs).atomic_put:
        retried(lambda: fs.pipe(dict([first, second])))
    else:
        put_atomic(fs, *first)
        put_atomic(fs, *second)


def write_via_temporary(fs: Any, path: str, write: Any) -> None:
    """``write(tmp)`` to a temporary name beside ``path`` (``.tmp-<random>-<name>``, the format's
    temporary prefix), then move it to ``path``; the temporary is removed if anything fails.
    The one temp-then-rename writer of fsspec filesystems (upload's local destinations too);
    local files the build writes itself go through :func:`shardgen.format.atomic_write`."""
    parent, _, name = path.rstrip("/").rpartition("/")
    tmp = f"{parent}/{TMP_PREFIX}{secrets.token_hex(6)}-{name}"
    if capabilities(fs).local:
        fs.makedirs(parent, exist_ok=True)
    try:
        write(tmp)
        fs.mv(tmp, path)
    except BaseException:
        try:
            fs.rm(tmp)
        except Exception:  # noqa: BLE001 - the original error matters
            pass
        raise


def single_get(fs: Any) -> dict[str, Any]:
    """Keyword arguments for ``fs.cat``/``fs.cat_file`` that read a whole object with one GET:
    s3fs otherwise asks for the object's size first (a HEAD, and a LIST when it is missing) to
    split large objects into concurrent ranged reads; shardgen's objects (sources, scratch
    files) are small. Empty for other filesystems."""
    kind = type(fs)
    if kind not in _SINGLE_GET:
        import inspect

        cat = getattr(kind, "_cat_file", None)
        try:
            _SINGLE_GET[kind] = cat is not None and "max_concurrency" in inspect.signature(cat).parameters
        except (TypeError, ValueError):
            _SINGLE_GET[kind] = False
    return {"max_concurrency": 1} if _SINGLE_GET[kind] else {}


_SINGLE_GET: dict[type, bool] = {}


def read_object(fs: Any, path: str) -> bytes:
    """The whole object (or file) at ``path``, with one GET on an object store (:func:`single_get`);
    transient errors are retried (:func:`retried`)."""
    return retried(lambda: fs.cat_file(path, **single_get(fs)))


def read_or_none(fs: Any, path: str) -> bytes | None:
    """:func:`read_object`, or None when missing or unreadable."""
    try:
        return read_object(fs, path)
    except (FileNotFoundError, OSError):
        return None
