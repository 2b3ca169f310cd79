"""Reads of many small objects (and ranges) on S3 at about a third of s3fs's client CPU.

A build from ``s3://`` sources reads every source object once, and a build to ``s3://``
reads its scratch PNGs back by ranges. Through s3fs each GET costs
about 1.1 ms of client CPU, mostly botocore's per-request machinery (event hooks, the user
agent, signing, parsing the response's headers into a dict, dates included), as much as
converting a 299×299 PNG. :func:`read_many` instead asks s3fs for a presigned URL of each
object (its public ``url``, about 0.16 ms: the credentials, endpoint, region and signature
stay s3fs's and botocore's) and fetches the URLs with one ``aiohttp`` session per process on
fsspec's event loop: 0.40 ms per object in all, and less server CPU too (measured against a
local SeaweedFS, ``docs/benchmarks.md``).

Anything other than a 200 (a missing object, a refused signature, a throttled request) and
any transport error is retried through s3fs itself, so errors, retries and their messages are
s3fs's; when s3fs then succeeds where the URL failed (a store that refuses this signature
version, a proxy or TLS set-up that only botocore's configuration covers) the fast path is
switched off for that filesystem. Filesystems whose requests carry more than a signature
(requester pays, SSE-C keys, other extra arguments, proxies in ``config_kwargs``) and every
non-S3 filesystem go through ``fs.cat`` directly.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import weakref
from typing import Any, Callable

from ..retry import is_transient
from .io import read_object, retried, single_get

__all__ = ["read_many", "read_ranges"]

#: Seconds a presigned URL stays valid: it is used at once.
_EXPIRES_S = 600
#: aiohttp's timeouts (seconds), connecting and between two reads of one response, unless
#: the filesystem's ``config_kwargs`` set botocore's (``--timeout`` does: 30 s by default).
_CONNECT_S, _READ_S = 60.0, 60.0
#: Requests in flight at once per call.
_CONCURRENCY = 32


def read_many(fs: Any, paths: list[str]) -> dict[str, bytes | BaseException]:
    """Every object in ``paths`` (paths as ``fs`` takes them), read whole with one GET each,
    concurrently: ``{path: bytes, or the exception that reading it raised}``, as
    ``fs.cat(paths, on_error="return")`` returns; a read that fails with a transient error
    is tried again (:data:`~shardgen.storage.io.STORAGE_RETRY`) before its error is returned."""

    def through_s3fs(idx: list[int]) -> list[Any]:
        part = [paths[i] for i in idx]
        return _values(fs.cat(part, on_error="return", **single_get(fs)), part)

    reader = _reader(fs)
    got = reader.read([(p, None, None) for p in paths], through_s3fs) if reader else through_s3fs(
        list(range(len(paths))))
    _retry_transient(got, lambda i: read_object(fs, paths[i]))
    return dict(zip(paths, got))


def read_ranges(fs: Any, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes | BaseException]:
    """Bytes ``starts[i]:ends[i]`` of object ``paths[i]`` for each ``i``, one ranged GET each,
    concurrently: bytes or the exception, as ``fs.cat_ranges(..., on_error="return")``; a read
    that fails with a transient error is tried again before its error is returned."""

    def through_s3fs(idx: list[int]) -> list[Any]:
        return fs.cat_ranges([paths[i] for i in idx], [starts[i] for i in idx], [ends[i] for i in idx],
                             on_error="return")

    reader = _reader(fs)
    got = reader.read(list(zip(paths, starts, ends)), through_s3fs) if reader else through_s3fs(
        list(range(len(paths))))
    _retry_transient(got, lambda i: retried(lambda: fs.cat_file(paths[i], start=starts[i], end=ends[i])))
    return got


def _retry_transient(got: list[Any], read_one: Callable[[int], bytes]) -> None:
    """Replace each transient error in ``got`` with ``read_one(i)``'s bytes, or its error."""
    for i, v in enumerate(got):
        if isinstance(v, BaseException) and is_transient(v):
            try:
                got[i] = read_one(i)
            except Exception as e:  # noqa: BLE001 - returned, as the first error was
                got[i] = e


#: A read: ``(path, start, end)``, start and end None for the whole object.
_Read = tuple[str, "int | None", "int | None"]


class _PresignedReader:
    """Presigned GETs over one aiohttp session on ``fs``'s loop (see the module's docstring)."""

    def __init__(self, fs: Any) -> None:
        self.fs, self.usable, self.session = fs, True, None
        self.pid = os.getpid()

    def read(self, reads: list[_Read], through_s3fs: Callable[[list[int]], list[Any]]) -> list[bytes | BaseException]:
        """Each read's bytes or error; the failed ones again through ``through_s3fs(indices)``."""
        from fsspec.asyn import sync

        got: list[Any] = sync(self.fs.loop, self._fetch_all, reads) if self.usable else [None] * len(reads)
        retry = [i for i, v in enumerate(got) if not isinstance(v, bytes)]
        if retry:
            again = through_s3fs(retry)
            # s3fs read what the URL was refused (not a missing object, which fails both ways,
            # nor a throttled or dropped request, which s3fs retried): not this store's way in
            if any(_refusal(got[i]) and isinstance(v, bytes) for i, v in zip(retry, again)):
                self.usable = False
            for i, v in zip(retry, again):
                got[i] = v
        return got

    async def _fetch_all(self, reads: list[_Read]) -> list[bytes | int | BaseException]:
        if self.session is None:
            self.session = _new_session(self.fs)
            weakref.finalize(self, _close, self.fs.loop, self.session)
        gate = asyncio.Semaphore(_CONCURRENCY)
        return list(await asyncio.gather(*(self._fetch(r, gate) for r in reads)))

    async def _fetch(self, read: _Read, gate: asyncio.Semaphore) -> bytes | int | BaseException:
        """The object's bytes (or the range's), else the HTTP status or the error."""
        import aiohttp

        path, start, end = read
        headers = {} if start is None else {"Range": f"bytes={start}-{end - 1}"}
        try:
            async with gate:
                url = await self.fs._url(path, expires=_EXPIRES_S)  # s3fs's public async ``url``
                async with self.session.get(url, headers=headers) as resp:
                    if resp.status not in (200, 206):
                        return resp.status
                    data = await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            return e
        if start is not None:
            if resp.status == 200:  # the whole object: a store that ignores ranges
                data = data[start:end]
            if len(data) != end - start:
                return ValueError(f"{path}: {len(data)} bytes for the range {start}:{end}")
        return data


def _refusal(failed: Any) -> bool:
    """A failure that says the URL is not accepted here (a signature refused, TLS or a proxy
    that only botocore's settings cover), as opposed to a missing object or a transient error."""
    import aiohttp

    if isinstance(failed, int):
        return failed in (400, 401, 403, 405, 501)
    return isinstance(failed, (ssl.SSLError, aiohttp.ClientSSLError, aiohttp.ClientProxyConnectionError,
                               aiohttp.ClientConnectorError))


def _values(got: dict, paths: list[str]) -> list[Any]:
    """``got``'s value for each of ``paths``, whatever form of the path ``fs.cat`` keyed it by."""
    stripped = {k.split("://", 1)[-1]: v for k, v in got.items()}
    return [got.get(p, stripped.get(p.split("://", 1)[-1])) for p in paths]


def _new_session(fs: Any) -> Any:
    import aiohttp

    verify = fs.client_kwargs.get("verify", True)
    if verify is False:
        tls: Any = False
    elif isinstance(verify, str):
        tls = ssl.create_default_context(cafile=verify)
    else:
        tls = _default_tls()
    config = fs.config_kwargs or {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.get("connect_timeout", _CONNECT_S),
                                    sock_read=config.get("read_timeout", _READ_S))
    # trust_env: the HTTP(S)_PROXY and NO_PROXY variables, as botocore honours them; only when
    # one is set, since aiohttp then reads the environment again for every request (0.35 ms).
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls), timeout=timeout,
                                 trust_env=_proxy_in_env())


def _proxy_in_env() -> bool:
    import urllib.request

    return bool(urllib.request.getproxies())


def _default_tls() -> ssl.SSLContext:
    """botocore's CA bundle (``AWS_CA_BUNDLE``, else certifi's), else the system's."""
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if not bundle:
        try:
            import certifi

            bundle = certifi.where()
        except ImportError:
            bundle = None
    return ssl.create_default_context(cafile=bundle)


def _close(loop: Any, session: Any) -> None:
    """Close ``session`` on ``loop`` (at exit or when its reader goes), if the loop still runs."""
    if session.closed or loop.is_closed() or not loop.is_running():
        return
    try:
        asyncio.run_coroutine_threadsafe(session.close(), loop).result(timeout=2)
    except Exception:  # noqa: BLE001 - closing at exit is best effort
        pass


#: One reader per filesystem instance and process (fsspec makes new instances after a fork).
_READERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _reader(fs: Any) -> _PresignedReader | None:
    if not _plain_s3(fs):
        return None
    try:
        reader = _READERS.get(fs)
    except TypeError:  # not weak-referenceable or hashable
        return None
    if reader is None or reader.pid != os.getpid():
        reader = _READERS[fs] = _PresignedReader(fs)
    return reader if reader.usable else None


def _plain_s3(fs: Any) -> bool:
    """``fs`` is s3fs's, with requests that need nothing but a signature."""
    s3fs = sys.modules.get("s3fs")
    if s3fs is None or not isinstance(fs, s3fs.S3FileSystem):
        return False
    try:
        import aiohttp  # noqa: F401 - s3fs's own dependency, through aiobotocore
    except ImportError:
        return False
    return not (getattr(fs, "requester_pays", False) or getattr(fs, "s3_additional_kwargs", None)
                or (getattr(fs, "config_kwargs", None) or {}).get("proxies"))
