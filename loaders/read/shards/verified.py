"""Verify before yield: a shard's samples are handed out only once its bytes match the manifest.

With ``verify`` on (the default), :class:`loaders.read.samples.SampleReader` opens every shard
through this module, which returns a stream (``read``, ``skip``, ``close``) only after

- the shard's size and xxh64 equal the manifest's ``bytes`` and ``xxh64``, and
- the shard holds exactly the manifest's ``samples`` (counted from its tar headers: a
  manifest claiming fewer would silently drop the rest, one claiming more would end the
  shard early);

otherwise it raises :class:`~loaders.errors.LoaderError` and nothing of the shard is used.

Local files (:func:`open_local`, :func:`open_local_fd`): a shard of at most
:func:`~loaders.read.shards.spool.memory_limit` bytes (64 MiB) is read into memory once (a buffer each
process reuses), checked, and its samples are parsed from exactly the bytes checked; a
larger one is hashed in a first pass and parsed in a second (from the page cache). A per-process memo keyed by the file's
``(st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)`` remembers shards already checked,
so a worker that reads an unchanged shard again does not hash it again (any write to the
file changes its ``st_ctime_ns``, which no user can set back).

Remote shards (:func:`fetch_remote`) are received whole, in ranged chunks with the usual
retries and prefetch, hashed as they arrive, into memory or a spool file
(:mod:`loaders.read.shards.spool`) that is the ``cache_dir`` entry when there is one.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import xxhash

from shardgen.format import ShardEntry, ShardReadError

from ...errors import LoaderError
from .cache import CacheWriter, ShardCache
from .sources import LocalSource, RemoteSource
from .spool import BytesSource, MemorySpool, give_back, memory_limit, private_spool, shard_changed, take_buffer
from .tarcount import SampleCounter, check_samples

__all__ = ["open_local", "open_local_fd", "open_cached", "fetch_remote", "forget_all"]

log = logging.getLogger("loaders")

#: Files checked by this process: ``stat key -> (xxh64, bytes, samples)``.
_CHECKED: dict[tuple[int, ...], tuple[str, int, int]] = {}
#: The most files remembered (then the memo starts afresh).
_CHECKED_MAX = 1 << 16
_BLOCK = 4 << 20


def _key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _known(st: os.stat_result, shard: ShardEntry) -> bool:
    return _CHECKED.get(_key(st)) == (shard.xxh64, shard.bytes, shard.samples)


def _remember(st: os.stat_result, shard: ShardEntry) -> None:
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED[_key(st)] = (shard.xxh64, shard.bytes, shard.samples)


def forget_all() -> None:
    """Forget every file this process has checked (the next read of each hashes it again)."""
    _CHECKED.clear()


# ----------------------------------------------------------------------------- local files

def open_local(path: str, shard: ShardEntry, name: str, limit: int):
    """A checked stream of the local shard ``path`` (see the module's docstring).

    Raises:
        LoaderError: missing, unreadable, another size or checksum or sample count.
        ShardReadError: a damaged tar.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise LoaderError(f"{name}: shard file is missing ({path})") from None
    except OSError as e:
        raise LoaderError(f"{name}: cannot open shard: {e.strerror or e}") from None
    return open_local_fd(fd, shard, name, limit)


def open_local_fd(fd: int, shard: ShardEntry, name: str, limit: int, touch: Callable[[int], None] | None = None):
    """:func:`open_local` for an open descriptor (taken over: closed when the stream is,
    or on error). ``touch(fd)``: called once the file passed (a cache entry marks its use),
    before the memo records the file's state."""
    try:
        st = os.fstat(fd)
        if st.st_size != shard.bytes:
            raise LoaderError(f"{name}: shard is {st.st_size} bytes but the manifest says {shard.bytes}; "
                              "it changed after the build (run shardgen verify)")
        src = None if _known(st, shard) else _check_fd(fd, shard, name, limit)
        if touch is not None:
            touch(fd)
            st = os.fstat(fd)
        _remember(st, shard)
        if src is not None:
            os.close(fd)
            return src
        os.lseek(fd, 0, os.SEEK_SET)
        f = os.fdopen(fd, "rb", buffering=1 << 20)
    except BaseException:
        os.close(fd)
        raise
    return LocalSource("", name, file=f)


def _fill(fd: int, view: memoryview, start: int, shard: ShardEntry, name: str) -> int:
    """Read the file at byte ``start`` into ``view`` (all of it, unless the file ends); returns the bytes read."""
    got = 0
    while got < len(view):
        try:
            n = os.preadv(fd, [view[got:]], start + got)
        except OSError as e:
            raise LoaderError(f"{name}: read failed: {e.strerror or e}") from None
        if not n:
            raise LoaderError(f"{name}: the file ended at byte {start + got:,} of {shard.bytes:,} while it was "
                              "checked; it changed after the build (run shardgen verify)")
        got += n
    return got


def _check_fd(fd: int, shard: ShardEntry, name: str, limit: int) -> BytesSource | None:
    """Check an open local shard: returns its bytes as a stream when they were read into
    memory (shards up to :func:`memory_limit`, parsed from exactly the bytes checked), None
    when it is to be read from the file again (larger ones: hashed in 4 MiB blocks, its
    headers counted from the same blocks)."""
    size = shard.bytes
    small = size <= memory_limit()
    buf = take_buffer(size if small else min(_BLOCK, size))
    try:
        if small:
            view = memoryview(buf)[:size]
            _fill(fd, view, 0, shard, name)
            digest, counter = xxhash.xxh64_hexdigest(view), SampleCounter(size)
            counter.feed(view, 0, lambda off, n: bytes(view[off:off + n]))
        else:
            digest, counter = _hash_blocks(fd, memoryview(buf)[:min(_BLOCK, size)], shard, name)
        if digest != shard.xxh64:
            raise shard_changed(name, shard, size, digest)
        read_at = (lambda off, n: bytes(view[off:off + n])) if small else (lambda off, n: os.pread(fd, n, off))
        check_samples(read_at, shard, name, limit, counter.finish(read_at))
    except BaseException:
        give_back(buf)
        raise
    if small:
        return BytesSource(view, name, buf)
    give_back(buf)
    return None


def _hash_blocks(fd: int, block: memoryview, shard: ShardEntry, name: str) -> tuple[str, SampleCounter]:
    """xxh64 of the file's ``shard.bytes`` bytes, read block by block, and the sample headers
    counted from the same blocks."""
    h, counter, pos = xxhash.xxh64(), SampleCounter(shard.bytes), 0
    while pos < shard.bytes:
        piece = block[:min(len(block), shard.bytes - pos)]
        _fill(fd, piece, pos, shard, name)
        h.update(piece)
        counter.feed(piece, pos, lambda off, n: os.pread(fd, n, off))
        pos += len(piece)
    return h.hexdigest(), counter


# ----------------------------------------------------------------------------- remote shards

def _receive(src: RemoteSource, spool, tee: CacheWriter | None) -> None:
    """Every byte of the shard, in order, into ``spool`` (and ``tee``)."""
    src.seek(0)
    while True:
        data = src.read(src.chunk)
        if not data:
            return
        spool.write(data)
        if tee is not None:
            tee.write(data)


def _spool_for(shard: ShardEntry, name: str, writer: CacheWriter | None):
    if shard.bytes <= memory_limit():
        return MemorySpool(shard.bytes, name)
    return writer if writer is not None else private_spool(name)


def fetch_remote(src: RemoteSource, shard: ShardEntry, name: str, limit: int, cache: ShardCache | None = None):
    """Receive the remote shard ``src`` whole, check it, and return a stream of its checked
    bytes; with ``cache`` the checked copy joins the cache. ``src`` is closed.

    Raises:
        LoaderError: transport errors after the retries, a server sending more than the
            shard, another size or checksum or sample count. ShardReadError: a damaged tar.
    """
    writer = cache.writer(shard, name) if cache is not None else None
    spool = _spool_for(shard, name, writer)
    try:
        _receive(src, spool, writer if writer is not spool else None)
        if spool is writer and writer.failed:  # cache_dir is full: check it in a private file instead
            log.warning("%s: not cached: %s", name, writer.failed)
            writer.discard()
            writer, spool = None, private_spool(name)
            _receive(src, spool, None)
        if spool.failed:
            raise LoaderError(f"{name}: cannot spool the shard to check it: {spool.failed}")
        digest = spool.hexdigest()
        if spool.size != shard.bytes or digest != shard.xxh64:
            raise shard_changed(name, shard, spool.size, digest)
        check_samples(spool.read_at, shard, name, limit)
        if writer is not None and writer.commit(used=False):
            _remember(os.fstat(writer.fd), shard)
        if isinstance(spool, MemorySpool):
            return spool.source()
        return LocalSource("", name, file=spool.reader())
    finally:
        src.close()
        spool.discard()
        if writer is not None and writer is not spool:
            writer.discard()


def open_cached(cache: ShardCache, shard: ShardEntry, name: str, limit: int):
    """A checked stream of the cached copy of ``shard``, or None when there is none or it
    failed its check (then it is removed from the cache, and the caller fetches the shard)."""
    fd = cache.open_entry(shard)
    if fd is None:
        return None
    keep = os.dup(fd)
    try:
        return open_local_fd(fd, shard, name, limit, touch=cache.mark_used)
    except (LoaderError, ShardReadError) as e:
        log.warning("%s: the cached copy failed its check and is fetched again: %s", name, e)
        cache.remove(shard, keep)
        return None
    finally:
        os.close(keep)

