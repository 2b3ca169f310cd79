"""Where a remote shard's bytes wait while they are checked: memory or a spool file.

With ``verify`` on, a remote shard is received whole and hashed while it arrives; its
samples are read only once its size and xxh64 match the manifest. A shard of at most
:func:`memory_limit` bytes waits in memory (:class:`MemorySpool`, exactly the declared
size, never more); a larger one in a file (:class:`FileSpool`): the cache entry's
temporary file when ``cache_dir`` is set (it then becomes the cache entry), else a
private file (:func:`private_spool`), created ``O_EXCL|O_NOFOLLOW`` mode 0600 in a fresh
0700 folder and unlinked at once, so nothing is left behind and no other user can see or
replace it.
"""

from __future__ import annotations

import os
import tempfile
import threading

import xxhash

from ...errors import LoaderError
from ..args import parse_size

__all__ = ["MemorySpool", "FileSpool", "BytesSource", "private_spool", "memory_limit", "shard_changed",
           "take_buffer", "give_back",
           "ENV_MEMORY_LIMIT", "DEFAULT_MEMORY_LIMIT", "CREATE_FLAGS"]

#: Shards up to this many bytes are checked in memory (64 MiB), larger ones in a spool file.
DEFAULT_MEMORY_LIMIT = 64 << 20
#: The environment variable that sets another limit (bytes, or a size such as ``16MiB``).
ENV_MEMORY_LIMIT = "SHARDGEN_SPOOL_ABOVE"
#: How every temporary file of the loaders is created: new, never through a symlink.
CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def memory_limit() -> int:
    """The largest shard checked in memory, in bytes (:data:`ENV_MEMORY_LIMIT`, default 64 MiB).

    Raises:
        UsageError: the variable is not a size.
    """
    value = os.environ.get(ENV_MEMORY_LIMIT)
    if not value:
        return DEFAULT_MEMORY_LIMIT
    return parse_size(value, ENV_MEMORY_LIMIT)


def shard_changed(name: str, shard, size: int, digest: str, used: bool = False) -> LoaderError:
    """The one-line error for a shard whose bytes are not the manifest's (``name``: its
    redacted URL; ``size``/``digest``: what arrived or is on disk; ``used``: whether samples
    of it were already handed out, as they are with ``verify=False``)."""
    what = []
    if size != shard.bytes:
        what.append(f"{size:,} bytes, the manifest says {shard.bytes:,}")
    if digest != shard.xxh64:
        what.append(f"xxh64 {digest}, the manifest says {shard.xxh64}")
    return LoaderError(f"{name}: the shard's bytes differ from the manifest ({'; '.join(what)}): the build changed "
                       f"under the loader, or the shard was tampered with; "
                       f"{'samples of it were already used' if used else 'none of its samples was used'} "
                       "(run shardgen verify)")


_pool_lock = threading.Lock()
_pool: tuple[int, bytearray] | None = None   # (pid, the free buffer)


def take_buffer(size: int) -> bytearray:
    """A buffer of at least ``size`` bytes: the process's free one when it is large enough
    (a fresh 40 MB buffer per shard costs more in page faults than hashing it), else a new one."""
    global _pool
    with _pool_lock:
        got, _pool = _pool, None
    if got is not None and got[0] == os.getpid() and len(got[1]) >= size:
        return got[1]
    return bytearray(size)


def give_back(buf: bytearray) -> None:
    """Return a buffer from :func:`take_buffer` for the next shard (the largest is kept, one per
    process, at most :func:`memory_limit` bytes)."""
    global _pool
    with _pool_lock:
        if len(buf) <= memory_limit() and (_pool is None or _pool[0] != os.getpid() or len(_pool[1]) < len(buf)):
            _pool = (os.getpid(), buf)


class BytesSource:
    """A shard stream over bytes in memory (``read``, ``skip``, ``close``); ``buf``, when
    given, is handed back (:func:`give_back`) on close."""

    def __init__(self, data, name: str, buf: bytearray | None = None):
        self._mv, self.name, self.pos, self._owned = memoryview(data), name, 0, buf

    def read(self, n: int) -> bytes:
        piece = self._mv[self.pos:self.pos + n]
        self.pos += len(piece)
        return bytes(piece)

    def skip(self, n: int) -> None:
        self.pos = min(len(self._mv), self.pos + n)

    def read_at(self, offset: int, n: int) -> bytes:
        return bytes(self._mv[offset:offset + n])

    def close(self) -> None:
        self._mv.release()
        if self._owned is not None:
            give_back(self._owned)
            self._owned = None


class MemorySpool:
    """A shard received into memory: exactly ``size`` bytes are ever written."""

    def __init__(self, size: int, name: str):
        self.name, self._cap, self.size = name, size, 0
        self._buf = take_buffer(size)
        self._h = xxhash.xxh64()
        self.failed: str | None = None

    def write(self, data: bytes) -> None:
        end = self.size + len(data)
        if end > self._cap:
            raise LoaderError(f"{self.name}: more bytes arrived than the manifest's {self._cap:,}")
        self._buf[self.size:end] = data
        self._h.update(data)
        self.size = end

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def read_at(self, offset: int, n: int) -> bytes:
        return bytes(self._buf[offset:min(offset + n, self.size)])

    def source(self) -> BytesSource:
        """The received bytes as a stream (the spool is used up)."""
        buf, self._buf = self._buf, None
        return BytesSource(memoryview(buf)[:self.size], self.name, buf)

    def discard(self) -> None:
        if self._buf is not None:
            give_back(self._buf)
            self._buf = None


class FileSpool:
    """A shard received into a file, hashed as it is written.

    Args:
        fd: the file, open for reading and writing, empty.
        name: the shard's URL (redacted), for messages.
    """

    def __init__(self, fd: int, name: str):
        self.fd, self.name, self.size = fd, name, 0
        self._h = xxhash.xxh64()
        self.failed: str | None = None   # why writing failed (then nothing more is written)

    def write(self, data: bytes) -> None:
        if self.failed:
            return
        self._h.update(data)
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(self.fd, view, self.size)
                self.size += n
                view = view[n:]
        except OSError as e:
            self.failed = e.strerror or str(e)

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def read_at(self, offset: int, n: int) -> bytes:
        return os.pread(self.fd, n, offset)

    def reader(self):
        """A buffered reader of the file from its start (it takes over the descriptor)."""
        fd, self.fd = self.fd, -1
        os.lseek(fd, 0, os.SEEK_SET)
        return os.fdopen(fd, "rb", buffering=1 << 20)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def private_spool(name: str) -> FileSpool:
    """A :class:`FileSpool` no other user can reach: a file created ``O_EXCL|O_NOFOLLOW``
    (mode 0600) in a new 0700 folder of the temporary directory (``$TMPDIR``), both
    removed at once (the open descriptor keeps the data until it is closed).

    Raises:
        LoaderError: the temporary directory cannot take it.
    """
    try:
        folder = tempfile.mkdtemp(prefix="shardgen-spool-")
        try:
            path = os.path.join(folder, "shard")
            fd = os.open(path, CREATE_FLAGS, 0o600)
            os.unlink(path)
        finally:
            os.rmdir(folder)
    except OSError as e:
        raise LoaderError(f"{name}: cannot make a spool file to check the shard in "
                          f"({tempfile.gettempdir()}): {e.strerror or e}") from None
    return FileSpool(fd, name)

