"""Ranged reads of remote shards that never hold more bytes than were asked for.

fsspec's ``cat_file(path, start, end)`` reads whatever body the server sends: a server
that ignores ``Range`` (or a hostile one) can send a 2 GB body for an 8 KiB chunk of a
2 MB shard, and it is all held in memory. :func:`read_range` asks for bytes
``start .. end-1`` and reads the answer in pieces, cutting it off with
:class:`BodyTooLarge` as soon as it is longer than asked (for a ``206``) or longer than the
whole shard's declared size (a ``200``: the server ignored the range and sends the whole
object, which a caller may use if it is exactly the declared size). A ``Content-Length``
that is already too large is refused before any of the body is read.

This holds for ``http(s)://`` (aiohttp, through fsspec's session, with its options and
timeouts) and ``s3://`` (s3fs's ``get_object``, same credentials and endpoint). Other
fsspec filesystems go through ``cat_file``, and their answer is checked after it arrived.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["BodyTooLarge", "read_range"]

#: Bytes read from a response at a time.
_PIECE = 1 << 20


class BodyTooLarge(ValueError):
    """A server sent (or announced) more bytes than were asked for: not retried."""


def read_range(fs: Any, path: str, start: int, end: int, size: int) -> bytes:
    """Bytes ``start .. end-1`` of the object ``path`` (of declared ``size`` bytes).

    Returns either exactly ``end - start`` bytes, or, from a server that ignored the range,
    the whole object when it is at most ``size`` bytes (the caller checks which). Fewer
    bytes are returned as they came (the caller decides whether that is an error).

    Raises:
        BodyTooLarge: the answer is longer than the range (or than ``size``, when the server
            ignored the range); the rest of it is not read.
        Exception: whatever the filesystem raises (transport errors, HTTP status errors).
    """
    from fsspec.asyn import sync

    if _is(fs, "fsspec.implementations.http", "HTTPFileSystem"):
        return sync(fs.loop, _http, fs, path, start, end, size)
    if _is(fs, "s3fs", "S3FileSystem"):
        return sync(fs.loop, _s3, fs, path, start, end, size)
    data = fs.cat_file(path, start=start, end=end)
    if len(data) > end - start and len(data) != size:
        raise BodyTooLarge(f"the server sent {len(data):,} bytes for a range of {end - start:,}")
    return data


def _is(fs: Any, module: str, cls: str) -> bool:
    mod = sys.modules.get(module)
    return mod is not None and isinstance(fs, getattr(mod, cls))


def _cap(partial: bool, start: int, end: int, size: int, announced: int | None) -> int:
    """The most bytes the answer may hold (raises when its announced length is larger)."""
    cap = end - start if partial else size
    if announced is not None and announced > cap:
        raise BodyTooLarge(f"the server announced {announced:,} bytes for "
                           + (f"a range of {cap:,}" if partial else f"a shard of {size:,} (it ignored the range)"))
    return cap


def _too_long(partial: bool, start: int, end: int, size: int) -> BodyTooLarge:
    return BodyTooLarge(f"the server sent more than {end - start:,} bytes for a range of {end - start:,}" if partial
                        else f"the server ignored the range and sent more than the shard's {size:,} bytes")


async def _read_capped(read, cap: int, partial: bool, start: int, end: int, size: int) -> bytes:
    """Pieces from ``read(n)`` (an async read) until it ends; at most ``cap`` bytes."""
    buf = bytearray()
    while True:
        piece = await read(min(_PIECE, cap + 1 - len(buf)))
        if not piece:
            return bytes(buf)
        buf += piece
        if len(buf) > cap:
            raise _too_long(partial, start, end, size)


async def _http(fs: Any, url: str, start: int, end: int, size: int) -> bytes:
    kw = fs.kwargs.copy()
    headers = dict(kw.pop("headers", None) or {})
    headers["Range"] = f"bytes={start}-{end - 1}"
    session = await fs.set_session()
    async with session.get(fs.encode_url(url), headers=headers, **kw) as r:
        fs._raise_not_found_for_status(r, url)
        partial = r.status == 206
        cap = _cap(partial, start, end, size, r.content_length)
        return await _read_capped(r.content.read, cap, partial, start, end, size)


async def _s3(fs: Any, path: str, start: int, end: int, size: int) -> bytes:
    from s3fs.core import version_id_kw

    bucket, key, version = fs.split_path(path)
    resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, Range=f"bytes={start}-{end - 1}",
                             **version_id_kw(version))
    body = resp["Body"]
    try:
        partial = bool(resp.get("ContentRange"))
        cap = _cap(partial, start, end, size, resp.get("ContentLength"))
        return await _read_capped(body.read, cap, partial, start, end, size)
    finally:
        body.close()
