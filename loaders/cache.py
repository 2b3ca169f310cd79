"""A size-bounded local cache of verified shards (``make_loader(cache_dir=...)``).

A remote shard is copied into a temporary file as its bytes stream in
(:class:`CacheWriter`, fed by :class:`loaders.sources.RemoteSource`); the copy joins
the cache only when its size and xxh64 match the manifest.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import xxhash

from .errors import LoaderError, UsageError

if TYPE_CHECKING:
    from .sources import ShardInfo

__all__ = ["ShardCache", "CacheWriter"]

log = logging.getLogger("loaders")


class CacheWriter:
    """A shard on its way into the cache: a temporary file plus a running xxh64."""

    def __init__(self, cache: "ShardCache", shard: ShardInfo, name: str):
        self.cache, self.shard, self.name = cache, shard, name
        self.tmp = os.path.join(cache.root, f".tmp-{os.getpid()}-{threading.get_ident()}-{shard.xxh64}")
        self._f = open(self.tmp, "wb")
        self._h = xxhash.xxh64()
        self.size = 0
        self.failed = False

    def write(self, data: bytes) -> None:
        if self.failed:
            return
        self._h.update(data)
        self.size += len(data)
        try:
            self._f.write(data)
        except OSError as e:  # disk full: keep streaming, just do not cache this one
            log.warning("%s: not cached: %s", self.name, e.strerror or e)
            self.failed = True

    def commit(self) -> bool:
        """Verify and move the file into the cache; returns whether it was cached.

        Raises:
            LoaderError: the bytes that arrived differ from the manifest (size or xxh64).
        """
        try:
            self._f.close()
        except OSError:
            self.failed = True
        if not self.failed:
            digest = self._h.hexdigest()
            if self.size != self.shard.bytes or digest != self.shard.xxh64:
                self.discard()
                raise LoaderError(
                    f"{self.name}: the shard's bytes differ from the manifest (got {self.size} bytes, "
                    f"xxh64 {digest}; manifest: {self.shard.bytes} bytes, xxh64 {self.shard.xxh64}); "
                    "it was changed after the build (run shardgen verify)")
            return self.cache._admit(self.tmp, self.shard)
        self.discard()
        return False

    def discard(self) -> None:
        try:
            self._f.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


class ShardCache:
    """A folder of verified shards, bounded in size, evicting the least recently used.

    Files are named ``<xxh64>-<bytes>.tar``, so builds that share a shard share its
    copy and a changed shard can never be served from an old copy. Use (a read)
    updates a file's modification time; when a new shard would push the total over
    ``limit`` bytes, the files used longest ago are deleted first (a shard being read
    by another process stays readable until it is closed). A shard larger than the
    whole limit is streamed but not cached. Safe to share between processes and
    ranks on one machine (an ``flock`` guards admission and eviction).

    Args:
        root: the cache folder (created).
        limit: the most bytes the cached shards may take together.
    """

    def __init__(self, root: str, limit: int):
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.limit = int(limit)
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cache_dir {root}: cannot create: {e.strerror or e}") from None
        if not os.access(self.root, os.W_OK):
            raise UsageError(f"cache_dir {root}: not writable")

    def path(self, shard: ShardInfo) -> str:
        return os.path.join(self.root, f"{shard.xxh64}-{shard.bytes}.tar")

    def lookup(self, shard: ShardInfo) -> str | None:
        """The cached copy's path (marking it used), or None."""
        p = self.path(shard)
        try:
            if os.stat(p).st_size != shard.bytes:
                return None
            os.utime(p)
        except FileNotFoundError:
            return None
        return p

    def writer(self, shard: ShardInfo, name: str) -> CacheWriter | None:
        if shard.bytes > self.limit:
            return None
        try:
            return CacheWriter(self, shard, name)
        except OSError as e:
            log.warning("%s: not cached: %s", name, e.strerror or e)
            return None

    def entries(self) -> list[tuple[float, str, int]]:
        """``(last use, path, bytes)`` of every cached shard, least recently used first."""
        out = []
        for n in os.listdir(self.root):
            if n.endswith(".tar") and not n.startswith("."):
                p = os.path.join(self.root, n)
                try:
                    st = os.stat(p)
                except FileNotFoundError:
                    continue
                out.append((st.st_mtime, p, st.st_size))
        out.sort()
        return out

    def _admit(self, tmp: str, shard: ShardInfo) -> bool:
        with open(os.path.join(self.root, ".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            final = self.path(shard)
            entries = [e for e in self.entries() if e[1] != final]
            total = sum(e[2] for e in entries)
            for _, p, size in entries:
                if total + shard.bytes <= self.limit:
                    break
                try:
                    os.unlink(p)
                    log.info("cache: evicted %s", os.path.basename(p))
                except FileNotFoundError:
                    pass
                total -= size
            if total + shard.bytes > self.limit:
                os.unlink(tmp)
                return False
            os.chmod(tmp, 0o644)
            os.replace(tmp, final)
            os.utime(final)
            self._sweep()
        return True

    def _sweep(self, older_than: float = 3600.0) -> None:
        """Remove temporary files left by killed processes."""
        now = time.time()
        for n in os.listdir(self.root):
            if n.startswith(".tmp-"):
                p = os.path.join(self.root, n)
                try:
                    if now - os.stat(p).st_mtime > older_than:
                        os.unlink(p)
                except FileNotFoundError:
                    pass
