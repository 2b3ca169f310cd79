"""How a build reads the members of its archives (:mod:`shardgen.sources.archives`): one open
handle per archive and process, a compressed tar as one forward stream.

:class:`ArchiveFiles` is the conversion's reader (the :class:`~shardgen.sources.files.SourceFiles`
interface): a zip member is read at the offset its central directory gives; an uncompressed tar
member at its offset through :mod:`tarfile`; the members of a compressed tar are gathered in one
forward pass of its stream (:class:`TarStream`). A member's stamp is its archive's: on resume an
unchanged archive is trusted without reading it. An archive given as a URL is read through
fsspec with ranged GETs.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
import zlib
from typing import Any, BinaryIO, Iterator, Sequence

import xxhash

from ..storage.location import Location
from .files import Read
from .stamps import stamp_of, unchanged

__all__ = ["ArchiveFiles", "TarStream", "open_archive", "is_compressed_tar", "error_text", "MAX_OPEN"]


def open_archive(path: str, loc: Location | None = None) -> BinaryIO:
    """The archive's bytes as a seekable file: a local file, or (``loc``: SRC is a URL) an fsspec
    file whose reads are ranged GETs (the zip's central directory, then each member)."""
    if loc is None:
        return open(path, "rb")
    return loc.fs().open(path, "rb", block_size=_URL_BLOCK)


#: Read-ahead of an archive given as a URL (bytes per ranged GET).
_URL_BLOCK = 4 << 20


def error_text(e: BaseException) -> str:
    """One line for an archive error (its ``strerror``, message or type)."""
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def is_compressed_tar(path: str) -> bool:
    """A ``.tar.gz`` / ``.tgz`` (read as a stream: a gzip stream has no random access)."""
    return path.lower().endswith((".tar.gz", ".tgz"))


class TarStream:
    """A compressed tar read forward, once: the members a chunk asks for are gathered as the
    stream passes them, and the stream goes on from there for the next chunk. A member behind
    the stream's position restarts it (one more pass): members in name order (``tar
    --sort=name``, Python's ``tarfile`` over a sorted listing) cost one pass per worker.

    Args:
        archive: the ``.tar.gz`` path.
    """

    def __init__(self, archive: str, loc: Location | None = None) -> None:
        self.archive, self.loc = archive, loc
        self._tf: tarfile.TarFile | None = None
        self._it: Iterator[tarfile.TarInfo] | None = None

    def _restart(self) -> None:
        self.close()
        self._raw = open_archive(self.archive, self.loc)
        self._tf = tarfile.open(fileobj=self._raw, mode="r|*")
        self._it = iter(self._tf)

    def collect(self, wanted: set[str]) -> dict[str, bytes]:
        """``{member: bytes}`` for each member of ``wanted`` found (normalised names)."""
        got: dict[str, bytes] = {}
        for attempt in range(2):
            if self._it is None or attempt:
                self._restart()
            for info in self._it:
                self._tf.members.clear()  # a stream keeps every header it passed otherwise
                name = posixpath.normpath(info.name)
                if name in wanted and name not in got and info.isreg():
                    got[name] = self._tf.extractfile(info).read()
                    if len(got) == len(wanted):
                        return got
            self._it = None  # at the end: the rest (if any) lies behind
        return got

    def close(self) -> None:
        if self._tf is not None:
            self._tf.close()
            self._raw.close()
        self._tf = self._it = None


#: This process's compressed-tar streams: ``(pid, path) -> TarStream``.
_STREAMS: dict[tuple[int, str], TarStream] = {}


def _stream(archive: str, loc: Location | None) -> TarStream:
    key = (os.getpid(), archive)
    s = _STREAMS.get(key)
    if s is None:
        while len(_STREAMS) >= MAX_OPEN:
            _STREAMS.pop(next(iter(_STREAMS))).close()
        s = _STREAMS[key] = TarStream(archive, loc)
    return s


#: Archives a process keeps open at most (the oldest is closed first).
MAX_OPEN = 16
#: This process's open archives: ``(pid, path, dev, inode, size, mtime) -> (handle, members)``.
_OPEN: dict[tuple, tuple[Any, dict[str, Any]]] = {}


class ArchiveFiles:
    """The bytes of SRC's files where SRC is read through archives (picklable; each process
    opens each archive once). A path ``<archive>/<member>`` is a member; any other path a file.

    Args:
        archives: the archives' paths (or URLs).
        loc: SRC's :class:`~shardgen.storage.location.Location` when SRC is the URL of an archive
            (``s3://bucket/archive.zip``: ranged reads); None: local archives.
    """

    def __init__(self, archives: Sequence[str], loc: Location | None = None) -> None:
        self.archives = tuple(sorted(archives, key=len, reverse=True))
        self.loc = loc

    def split(self, path: str) -> tuple[str | None, str]:
        """``(archive, member)`` of ``path``; ``(None, path)`` for a plain file."""
        for a in self.archives:
            if path.startswith(a + "/"):
                return a, path[len(a) + 1:]
        return None, path

    def _handle(self, archive: str) -> tuple[Any, dict[str, Any]]:
        """``(open archive, {normalised member name: its info})``: opened once per process (the
        reader travels to the workers with every job; the handles stay in the process), and again
        when the archive's stat changed."""
        # the pid: a forked worker must not share its parent's file offset
        if self.loc is None:
            st = os.stat(archive)
            ident: tuple = (os.getpid(), archive, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        else:
            ident = (os.getpid(), archive)
        h = _OPEN.get(ident)
        if h is None:
            if archive.lower().endswith(".zip"):
                zf = zipfile.ZipFile(archive if self.loc is None else open_archive(archive, self.loc))
                infos = {}
                for i in zf.infolist():
                    infos.setdefault(posixpath.normpath(i.filename), i)
                h = (zf, infos)
            else:
                tf = (tarfile.open(archive, "r:*") if self.loc is None
                      else tarfile.open(fileobj=open_archive(archive, self.loc), mode="r:*"))
                infos = {}
                for i in tf:
                    infos.setdefault(posixpath.normpath(i.name), i)
                h = (tf, infos)
            while len(_OPEN) >= MAX_OPEN:
                _OPEN.pop(next(iter(_OPEN)))[0].close()
            _OPEN[ident] = h
        return h

    def read(self, path: str, limit: int = -1) -> bytes:
        """The bytes of ``path`` (``limit``: at most that many, from the start; -1: all).

        Raises:
            OSError: it cannot be read (a missing member reads as a missing file).
        """
        archive, member = self.split(path)
        if archive is None:
            with open(path, "rb") as f:
                return f.read(limit)
        if is_compressed_tar(archive):  # a stream: the member is read whole as it passes
            got = self._streamed([path])[path]
            if isinstance(got, BaseException):
                raise got
            return got if limit < 0 else got[:limit]
        try:
            h, infos = self._handle(archive)
            info = infos[member]
            if isinstance(h, zipfile.ZipFile):
                if limit < 0:
                    return h.read(info)  # whole: its CRC is checked
                with h.open(info) as zf:
                    return zf.read(limit)
            f = h.extractfile(info)
            if f is None:
                raise OSError(f"{member}: not a regular file")
            return f.read(limit)
        except KeyError:
            raise FileNotFoundError(2, os.strerror(2), path) from None
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, ValueError) as e:
            raise OSError(f"{error_text(e)} (in {archive})") from None

    def head(self, path: str, n: int) -> bytes:
        """The first ``n`` bytes of ``path`` (empty when it cannot be read): a sniff reads no more."""
        try:
            return self.read(path, n)
        except OSError:
            return b""

    def read_each(self, paths: Sequence[str]) -> Iterator[Read]:
        """Each path's bytes, in order; the members of a compressed tar are gathered in one
        forward pass of its stream (:class:`TarStream`), the others read at their offsets."""
        streamed = self._streamed(paths)
        for path in paths:
            archive, member = self.split(path)
            stamp = stamp_of(archive or path)  # before the read: a later write changes the stamp
            try:
                got = streamed.get(path)
                if isinstance(got, BaseException):
                    raise got
                yield path, stamp, got if got is not None else self.read(path)
            except OSError as e:
                yield path, stamp, e

    def _streamed(self, paths: Sequence[str]) -> dict[str, bytes | OSError]:
        """The bytes of the members of compressed tars among ``paths`` (a missing one: its error)."""
        wanted: dict[str, dict[str, str]] = {}
        for path in paths:
            archive, member = self.split(path)
            if archive is not None and is_compressed_tar(archive):
                wanted.setdefault(archive, {})[member] = path
        out: dict[str, bytes | OSError] = {}
        for archive, members_ in wanted.items():
            try:
                got = _stream(archive, self.loc).collect(set(members_))
            except (OSError, tarfile.TarError, zlib.error, EOFError, ValueError) as e:
                _STREAMS.pop((os.getpid(), archive), None)
                got, err = {}, OSError(f"{error_text(e)} (in {archive})")
            else:
                err = None
            for member, path in members_.items():
                out[path] = got[member] if member in got else (
                    err or FileNotFoundError(2, os.strerror(2), path))
        return out

    def trusted(self, stamp: list[int] | None, path: str) -> bool:
        archive, _ = self.split(path)
        return unchanged(stamp, archive or path)

    def xxh64(self, path: str) -> str | None:
        try:
            return xxhash.xxh64_hexdigest(self.read(path))
        except OSError:
            return None
