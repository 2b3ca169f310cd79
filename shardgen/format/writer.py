"""The one tar writer of shardgen (``docs/format.md``, "Shards").

Every member is a regular file with mode 0644, uid/gid 0, empty user and group names and
mtime :data:`TAR_MTIME`, in the order given; the archive ends with two zero blocks and is
padded to a 10,240-byte record. Those are the bytes Python's :mod:`tarfile` writes in PAX
format, about 10x faster. Keys are bounded (see :mod:`shardgen.format.keys`), so shardgen
never needs a PAX header.
"""

from __future__ import annotations

import tarfile

import xxhash

from .atomic import atomic_write

__all__ = ["TAR_MTIME", "BLOCK", "ShardWriter", "tar_header"]

#: mtime of every tar member (2000-01-01T00:00:00Z): fixed so shards are byte-identical.
TAR_MTIME = 946684800
BLOCK = 512
_RECORD = 20 * BLOCK  # tar pads archives to whole records, as GNU tar and Python's tarfile do
_ZERO = bytes(BLOCK)


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def tar_header(name: str, size: int) -> bytes:
    """The header of a regular file (mode 0644, uid/gid 0, mtime :data:`TAR_MTIME`).

    Names of 100 bytes or more, or not ASCII, get a PAX extended header, exactly as
    ``tarfile`` writes it; shardgen's own member names never do.
    """
    raw = name.encode("utf-8")
    if len(raw) >= 100 or not name.isascii():
        ti = tarfile.TarInfo(name)
        ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = size, TAR_MTIME, 0o644, 0, 0, "", ""
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(BLOCK)
    h[0:len(raw)] = raw
    h[100:108] = _octal(0o644, 8)
    h[108:116] = _octal(0, 8)
    h[116:124] = _octal(0, 8)
    h[124:136] = _octal(size, 12)
    h[136:148] = _octal(TAR_MTIME, 12)
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:265] = b"ustar\x0000"
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


class _Aborted(Exception):
    """Thrown into the atomic write to drop the temporary file."""


class ShardWriter:
    """Write one shard atomically, hashing it as it is written.

    Usage::

        with ShardWriter("/out/train/train-000000.tar") as w:
            w.add("key", {"png": png_bytes, "cls": b"3", "json": b"{...}"})
        w.bytes, w.xxh64, w.samples

    Members are written in the order of the dict given to :meth:`add`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._ctx = atomic_write(path)
        self._f = self._ctx.__enter__()
        self._h = xxhash.xxh64()
        self._n = 0
        self.samples = 0
        self.bytes = 0
        self.xxh64 = ""
        self._done = False

    def _write(self, b: bytes) -> None:
        self._f.write(b)
        self._h.update(b)
        self._n += len(b)

    def add(self, key: str, fields: dict[str, bytes]) -> None:
        """Append one sample: a member ``<key>.<ext>`` per item of ``fields``."""
        for ext, data in fields.items():
            self._write(tar_header(f"{key}.{ext}", len(data)))
            self._write(data)
            pad = -len(data) % BLOCK
            if pad:
                self._write(_ZERO[:pad])
        self.samples += 1

    def close(self) -> None:
        """Finish the tar, fsync it and rename it to its final name."""
        if self._done:
            return
        self._write(bytes(2 * BLOCK + (-(self._n + 2 * BLOCK) % _RECORD)))
        self._done = True
        self._ctx.__exit__(None, None, None)
        self.bytes = self._n
        self.xxh64 = self._h.hexdigest()

    def abort(self) -> None:
        """Drop the temporary file."""
        if not self._done:
            self._done = True
            self._ctx.__exit__(_Aborted, _Aborted("aborted"), None)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


