"""How a build reads its source files' bytes: one interface, one reader per kind of SRC.

The conversion (:class:`~shardgen.build.convert.ChunkTask`) asks a reader for the bytes of a
chunk's files and, on resume, whether a file is still the one it converted; it never knows
where the files are. Two readers:

* :class:`LocalFiles`: files on this machine; each file's stat stamp
  (:mod:`~shardgen.sources.stamps`) is taken just before it is read, so that an unchanged file
  is trusted on resume without being read again.
* :class:`FsFiles`: files under an fsspec URL (``s3://...``); batches of concurrent GETs, the next
  batch fetched while this one is converted. An object store has no stamp to trust: on resume
  every source is read again and compared by its xxh64.

Both are picklable (they travel to worker processes and Dask workers). A file that cannot be read
comes back as its :class:`OSError` (the chunk records a skip with the reason); trouble with the
store itself (a 500, a lost connection, past the retries) raises, so the build stops resumable.
"""

from __future__ import annotations

import errno
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Protocol, Sequence

import xxhash

from ..format import file_xxh64
from ..retry import is_transient
from ..storage import is_url
from ..storage.get import read_many
from ..storage.io import read_object
from ..storage.location import Location
from .stamps import stamp_of, unchanged

__all__ = ["SourceFiles", "LocalFiles", "FsFiles", "Read", "source_files"]

#: One file as read: ``(path, stamp or None, bytes or the OSError that stopped the read)``.
Read = tuple[str, "list[int] | None", "bytes | OSError"]


class SourceFiles(Protocol):
    """What the conversion needs of the place its sources are."""

    def read_each(self, paths: Sequence[str]) -> Iterator[Read]:
        """Each path's bytes, in order (see :data:`Read`)."""

    def trusted(self, stamp: list[int] | None, path: str) -> bool:
        """``path`` is, by its recorded ``stamp``, unchanged since it was read (no read needed)."""

    def xxh64(self, path: str) -> str | None:
        """The xxh64 of the file's bytes now (None: it cannot be read)."""


class LocalFiles:
    """Source files on this machine (paths), read one after the other with their stamps."""

    def read_each(self, paths: Sequence[str]) -> Iterator[Read]:
        for path in paths:
            stamp = stamp_of(path)  # before the read: a later write changes the stamp
            try:
                with open(path, "rb") as f:
                    yield path, stamp, f.read()
            except OSError as e:
                yield path, stamp, e

    def trusted(self, stamp: list[int] | None, path: str) -> bool:
        return unchanged(stamp, path)

    def xxh64(self, path: str) -> str | None:
        try:
            return file_xxh64(path)[0]
        except OSError:
            return None


#: Sources fetched per request batch; the next batch is fetched while this one is converted.
BATCH = 16
#: The first batch of a chunk is smaller, so that its conversion starts sooner.
FIRST = 4


class FsFiles:
    """Source files under an fsspec location (their paths are full URLs); never stamped.

    Args:
        loc: SRC.
    """

    def __init__(self, loc: Location) -> None:
        self.loc = loc

    def read_each(self, paths: Sequence[str]) -> Iterator[Read]:
        """Batches of :data:`BATCH` concurrent reads (the first :data:`FIRST`), one batch ahead,
        each read one GET (:func:`~shardgen.storage.get.read_many`).

        Raises:
            OSError: the store's own trouble (:func:`~shardgen.retry.is_transient`) past its retries.
        """
        fs = self.loc.fs()
        paths = list(paths)
        batches = [paths[:FIRST]] + [paths[i:i + BATCH] for i in range(FIRST, len(paths), BATCH)]
        batches = [b for b in batches if b]
        with ThreadPoolExecutor(1) as ex:
            ahead = ex.submit(_fetch, fs, batches[0]) if batches else None
            for i, batch in enumerate(batches):
                got = ahead.result()
                ahead = ex.submit(_fetch, fs, batches[i + 1]) if i + 1 < len(batches) else None
                for p in batch:
                    data = got.get(fs._strip_protocol(p))
                    yield p, None, _as_read(data, p)

    def trusted(self, stamp: list[int] | None, path: str) -> bool:
        return False

    def xxh64(self, path: str) -> str | None:
        try:
            return xxhash.xxh64_hexdigest(read_object(self.loc.fs(), path))
        except OSError:
            return None


def _fetch(fs, batch: list[str]) -> dict[str, bytes | BaseException]:
    if len(batch) > 1:
        got = read_many(fs, batch)
    else:
        try:
            got = {batch[0]: read_object(fs, batch[0])}
        except OSError as e:
            got = {batch[0]: e}
    return {fs._strip_protocol(k): v for k, v in got.items()}


def _as_read(data: bytes | BaseException | None, path: str) -> bytes | OSError:
    """The bytes, or the file's own error; the store's trouble raises (the build stops, resumable)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if data is None or isinstance(data, FileNotFoundError):
        # a missing object reads as a missing local file does (the same skip reason)
        return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    if is_transient(data):
        raise data
    if isinstance(data, OSError):
        return data
    return OSError(str(data))


def source_files(src: Location | None) -> SourceFiles:
    """The reader of SRC: :class:`FsFiles` for a URL location, else :class:`LocalFiles`."""
    return FsFiles(src) if src is not None and is_url(src.url) else LocalFiles()
