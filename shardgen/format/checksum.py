"""xxh64 checksums of files and streams (the manifest's ``xxh64`` and ``bytes`` of a shard)."""

from __future__ import annotations

import xxhash

__all__ = ["HashingReader", "stream_xxh64", "file_xxh64"]

_BLOCK = 1 << 22


class HashingReader:
    """A read-only stream over ``f`` that hashes (xxh64) and counts every byte read."""

    def __init__(self, f) -> None:
        self.f = f
        self.h = xxhash.xxh64()
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read() if size is None or size < 0 else self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left, e.g. the tar's end-of-archive padding."""
        while True:
            b = self.f.read(_BLOCK)
            if not b:
                return
            self.h.update(b)
            self.n += len(b)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def stream_xxh64(f, block: int = _BLOCK) -> tuple[str, int]:
    """(xxh64 hex digest, size in bytes) of what is left in a readable binary file object."""
    r = HashingReader(f)
    while r.read(block):
        pass
    return r.hexdigest(), r.n


def file_xxh64(path: str, block: int = _BLOCK) -> tuple[str, int]:
    """(xxh64 hex digest, size in bytes) of a local file, read in 4 MiB blocks."""
    with open(path, "rb") as f:
        return stream_xxh64(f, block)
