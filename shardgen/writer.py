"""Reproducible tar shards: fixed metadata, fixed member order, checksummed as written.

A shard is written under a temporary name in its final folder, fsync'ed and renamed,
so nothing under a final name is ever partial.
"""

from __future__ import annotations

import io
import os
import tarfile
import tempfile

import xxhash

__all__ = ["TAR_MTIME", "ShardWriter", "file_xxh64"]

#: mtime of every tar member (2000-01-01T00:00:00Z): fixed so shards are byte-identical.
TAR_MTIME = 946684800


class _HashingFile(io.RawIOBase):
    """A write-only file that forwards to ``f`` and hashes/counts what passes."""

    def __init__(self, f) -> None:
        self.f = f
        self.h = xxhash.xxh64()
        self.n = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.n

    def write(self, b) -> int:
        self.f.write(b)
        self.h.update(b)
        self.n += len(b)
        return len(b)


class ShardWriter:
    """Write one shard atomically.

    Usage::

        with ShardWriter("/out/train/train-000000.tar") as w:
            w.add("key", {"png": png_bytes, "cls": b"3", "json": b"{...}"})
        w.bytes, w.xxh64, w.samples

    Members are written in the order of the dict given to :meth:`add`, each with
    mode 0644, uid/gid 0, empty user/group names and mtime :data:`TAR_MTIME`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        folder = os.path.dirname(os.path.abspath(path))
        fd, self.tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
        self._f = os.fdopen(fd, "wb", buffering=1 << 20)
        self._hf = _HashingFile(self._f)
        self._tar = tarfile.open(fileobj=self._hf, mode="w", format=tarfile.PAX_FORMAT)
        self.samples = 0
        self.bytes = 0
        self.xxh64 = ""
        self._done = False

    def add(self, key: str, fields: dict[str, bytes]) -> None:
        for ext, data in fields.items():
            ti = tarfile.TarInfo(f"{key}.{ext}")
            ti.size = len(data)
            ti.mtime = TAR_MTIME
            ti.mode = 0o644
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            self._tar.addfile(ti, io.BytesIO(data))
        self.samples += 1

    def close(self) -> None:
        """Finish the tar, fsync and rename it to its final name."""
        if self._done:
            return
        self._tar.close()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.chmod(self.tmp, 0o644)
        os.replace(self.tmp, self.path)
        self.bytes = self._hf.n
        self.xxh64 = self._hf.h.hexdigest()
        self._done = True

    def abort(self) -> None:
        """Drop the temporary file."""
        if self._done:
            return
        self._done = True
        try:
            self._f.close()
        except Exception:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def file_xxh64(path: str, block: int = 1 << 22) -> tuple[str, int]:
    """(xxh64 hex digest, size in bytes) of a file, read in 4 MiB blocks."""
    h = xxhash.xxh64()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(block)
            if not b:
                break
            h.update(b)
            n += len(b)
    return h.hexdigest(), n
