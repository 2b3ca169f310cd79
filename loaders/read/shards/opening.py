"""How a reader opens a shard: checked before use (``verify``, the default) or streamed as it comes.

With ``spec.verify`` every shard goes through :mod:`loaders.read.shards.verified`: a local file, a
``cache_dir`` copy (a copy that fails its check is removed and the shard fetched again) or
a remote object received whole; only bytes that matched the manifest come out, so a
reader whose segment starts inside a remote shard receives the whole shard first (with a
``cache_dir`` it then stays there). With ``verify=False`` (unsafe: for storage the user
owns) shards stream unchecked as before, a remote one copied into ``cache_dir`` as it
streams and checked only at its end, and :func:`jump` lets a reader enter a remote shard
near its first sample without receiving what comes before.
"""

from __future__ import annotations

import os
from typing import Any

from shardgen.format import ShardEntry, TarReader, find_sample_headers
from shardgen.format.validate import member_limit

from .cache import ShardCache
from .sources import LocalSource, RemoteSource
from .verified import fetch_remote, open_cached, open_local

__all__ = ["open_shard", "jump"]


def open_shard(spec: Any, cache: ShardCache | None, shard: ShardEntry):
    """A stream (``read``, ``skip``, ``close``) of ``shard``'s bytes (see the module's docstring).

    Raises:
        LoaderError, ShardReadError: the shard cannot be read, or (``verify``) is not the
            manifest's; nothing of it has been handed out then.
    """
    name = spec.shard_name(shard)
    limit = min(shard.bytes, member_limit(spec.size))
    if spec.local_root is not None:
        path = os.path.join(spec.local_root, shard.path)
        return open_local(path, shard, name, limit) if spec.verify else LocalSource(path, name, shard.bytes)
    if cache is not None:
        if spec.verify:
            hit = open_cached(cache, shard, name, limit)
            if hit is not None:
                return hit
        else:
            path = cache.lookup(shard)
            if path is not None:
                return LocalSource(path, name, shard.bytes)
    fs, base = spec.remote_fs()
    tee = cache.writer(shard, name) if cache is not None and not spec.verify else None
    src = RemoteSource(fs, base.rstrip("/") + "/" + shard.path, shard.bytes, name, chunk_size=spec.chunk_size,
                       retries=spec.retries, tee=tee, timeout=spec.timeout)
    return fetch_remote(src, shard, name, limit, cache) if spec.verify else src


def jump(spec: Any, tar: TarReader, src: RemoteSource, index: int, shard: ShardEntry, target: int) -> None:
    """Move an unchecked remote stream close to sample ``target`` without reading what comes before.

    The position is guessed from the shard's mean sample size; one ranged read of
    64 KiB (or three mean samples) there finds a sample header (checksummed, at a 512-byte
    boundary) whose key ``<split>/dataset.json`` places at or before ``target``; the reader
    skips the few samples between. Without such an index (or a hit after 4 reads) the
    shard is read from its start. Never used with ``verify`` (the samples before ``target``
    must be received to check the shard).
    """
    keys = spec.shard_keys(index)
    if spec.verify or not keys or shard.samples <= 0:
        return
    per = shard.bytes / shard.samples
    guess = int(per * target)
    window = int(min(max(1 << 16, 3 * per), 8 << 20)) // 512 * 512
    for _ in range(4):
        a = max(0, guess - window // 2)
        a -= a % 512
        b = min(shard.bytes, a + window)
        best = None
        data = src.fetch(a, b)
        for off, key in find_sample_headers(data, a):
            j = keys.get(key)
            if j is not None and j <= target and (best is None or j > best[1]):
                best = (off, j)
        if best is not None:
            src.seek(best[0], have=(a, data))
            tar.restart_at(best[0], best[1])
            return
        if a == 0:
            return
        guess = a - window // 2
