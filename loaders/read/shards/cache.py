"""A size-bounded local cache of verified shards (``make_loader(cache_dir=...)``).

A remote shard is copied into a temporary file as its bytes arrive (:class:`CacheWriter`);
the copy joins the cache only when its size and xxh64 match the manifest. The folder is
the user's own: created mode 0700 when missing and checked on every start
(:func:`check_private_folder`: owned by the effective user, not writable by group or
others, not a symbolic link), since a folder another user can write could hand this
user's training forged shards, or make its writes land elsewhere through planted links.
Temporary files are created ``O_CREAT|O_EXCL|O_NOFOLLOW``; an entry's path is built from
the manifest's checked ``xxh64`` and ``bytes`` and proven to lie in the folder.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time
from typing import TYPE_CHECKING

from shardgen.format.validate import is_hex16

from ...errors import LoaderError, UsageError
from ..private import make_private_dir
from .spool import CREATE_FLAGS, FileSpool, shard_changed

if TYPE_CHECKING:
    from shardgen.format import ShardEntry

__all__ = ["ShardCache", "CacheWriter", "check_private_folder", "cache_root"]

log = logging.getLogger("loaders")

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def check_private_folder(path: str, what: str) -> None:
    """Create ``path`` (mode 0700) if it is missing, then check that it is a private folder
    (:mod:`loaders.read.private`'s rule, the decoded cache's too).

    Raises:
        UsageError: one line naming the folder, the problem and the fix: it cannot be created,
            is a symbolic link or not a folder, belongs to another user, is writable by its
            group or by others, or is not writable by this user.
    """
    try:
        problem = make_private_dir(path)
    except OSError as e:
        raise UsageError(f"{what} {path}: cannot create: {e.strerror or e}") from None
    if problem == "is a symbolic link":
        problem += f"; give the folder itself ({os.path.realpath(path)}), if it is yours"
    elif problem is not None and problem.startswith("belongs to"):
        problem += "; a folder another user controls could feed you forged shards: use a folder of your own"
    elif problem is not None and problem.startswith("is writable by other users"):
        problem += f"; make it private (chmod 700 {path}) or use a folder of your own"
    elif problem is None and not os.access(path, os.W_OK | os.X_OK):
        problem = f"not writable (chmod u+rwx {path})"
    if problem is not None:
        raise UsageError(f"{what} {path}: {problem}")


def cache_root(cache_dir: str) -> str:
    """``cache_dir`` as an absolute path, created (0700) and checked (:func:`check_private_folder`).

    Raises:
        UsageError: it is not the user's own private folder.
    """
    root = os.path.abspath(os.path.expanduser(str(cache_dir)))
    check_private_folder(root, "cache_dir")
    return root


class CacheWriter(FileSpool):
    """A shard on its way into the cache: a temporary file (``O_EXCL|O_NOFOLLOW``, mode
    0600) plus a running xxh64; a write that fails (disk full) stops the copying, not the
    read (:attr:`failed` says why)."""

    def __init__(self, cache: "ShardCache", shard: ShardEntry, name: str):
        final = cache.path(shard)
        self.tmp = os.path.join(cache.root, f".tmp-{os.getpid()}-{threading.get_ident()}-{os.path.basename(final)}")
        super().__init__(os.open(self.tmp, CREATE_FLAGS, 0o600), name)
        self.cache, self.shard = cache, shard
        self.committed = False

    def commit(self, used: bool = True) -> bool:
        """Verify and move the file into the cache; returns whether it was cached. The
        descriptor stays open (a :meth:`reader` of the entry) until :meth:`discard`.

        Raises:
            LoaderError: the bytes that arrived differ from the manifest (size or xxh64).
        """
        if self.failed:
            log.warning("%s: not cached: %s", self.name, self.failed)
            self.discard()
            return False
        digest = self.hexdigest()
        if self.size != self.shard.bytes or digest != self.shard.xxh64:
            self.discard()
            raise shard_changed(self.name, self.shard, self.size, digest, used)
        self.committed = self.cache._admit(self.tmp, self.fd, self.shard)
        return self.committed

    def discard(self) -> None:
        super().discard()
        if not self.committed:
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
    whole limit is streamed but not cached. Safe to share between the processes and
    ranks of one user on one machine (an ``flock`` guards admission and eviction).

    Args:
        root: the cache folder (created 0700 if missing; see :func:`check_private_folder`).
        limit: the most bytes the cached shards may take together.

    Raises:
        UsageError: the folder is not the user's own private folder.
    """

    def __init__(self, root: str, limit: int):
        self.root = cache_root(root)
        self.limit = int(limit)

    def path(self, shard: ShardEntry) -> str:
        """The entry's path, proven to lie in the cache folder.

        Raises:
            LoaderError: the manifest's ``xxh64`` or ``bytes`` cannot name an entry.
        """
        if not is_hex16(shard.xxh64) or not isinstance(shard.bytes, int) or shard.bytes < 0:
            raise LoaderError(f"{shard.path}: no cache entry for xxh64 {shard.xxh64!r}, bytes {shard.bytes!r}")
        p = os.path.join(self.root, f"{shard.xxh64}-{shard.bytes}.tar")
        if os.path.dirname(p) != self.root:
            raise LoaderError(f"{shard.path}: cache entry {p} would lie outside {self.root}")
        return p

    def lookup(self, shard: ShardEntry) -> str | None:
        """The cached copy's path (marking it used), or None (used with ``verify=False``)."""
        fd = self.open_entry(shard)
        if fd is None:
            return None
        self.mark_used(fd)
        os.close(fd)
        return self.path(shard)

    def open_entry(self, shard: ShardEntry) -> int | None:
        """A read-only descriptor of the cached copy (a regular file of the right size,
        not a link), or None. Its bytes are not checked here."""
        try:
            fd = os.open(self.path(shard), _OPEN_FLAGS)
        except OSError:
            return None
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size == shard.bytes:
            return fd
        os.close(fd)
        return None

    def mark_used(self, fd: int) -> None:
        try:
            os.utime(fd)
        except OSError:
            pass

    def remove(self, shard: ShardEntry, fd: int) -> None:
        """Delete the entry that ``fd`` reads (found damaged), unless another process has
        replaced it with a new copy meanwhile."""
        with self._lock():
            p = self.path(shard)
            try:
                if os.lstat(p).st_ino == os.fstat(fd).st_ino:
                    os.unlink(p)
            except FileNotFoundError:
                pass

    def writer(self, shard: ShardEntry, name: str) -> CacheWriter | None:
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
                    st = os.lstat(p)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out.append((st.st_mtime, p, st.st_size))
        out.sort()
        return out

    def _lock(self):
        return _Lock(os.path.join(self.root, ".lock"))

    def _admit(self, tmp: str, fd: int, shard: ShardEntry) -> bool:
        with self._lock():
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
            os.replace(tmp, final)
            self.mark_used(fd)
            self._sweep()
        return True

    def _sweep(self, older_than: float = 3600.0) -> None:
        """Remove temporary files left by killed processes."""
        now = time.time()
        for n in os.listdir(self.root):
            if n.startswith(".tmp-"):
                p = os.path.join(self.root, n)
                try:
                    if now - os.lstat(p).st_mtime > older_than:
                        os.unlink(p)
                except FileNotFoundError:
                    pass


class _Lock:
    """An exclusive ``flock`` on the cache's ``.lock`` file (opened ``O_NOFOLLOW``)."""

    def __init__(self, path: str):
        self.path = path

    def __enter__(self):
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            raise LoaderError(f"cache_dir {os.path.dirname(self.path)}: cannot open its lock file "
                              f"{os.path.basename(self.path)}: {e.strerror or e}") from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
