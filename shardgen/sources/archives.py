"""SRC as the download: an archive, or a folder of archives, read in place (never unpacked).

The rules (documented for users in ``docs/layouts.md``):

* **SRC may be an archive** (``.zip``, ``.tar``, ``.tar.gz``, ``.tgz``): its members are SRC's
  files, and every layout and rule of a folder applies to them (Kaggle, ImageFolder, pre-split,
  ``--index``, the wrapper folder, ``masks/`` never read). Kaggle's ``archive.zip`` builds as its
  unpacked folder does, with the same keys.
* **A folder whose top holds archives and no folder** (NIH's ``images_001.tar.gz`` ...,
  PadChest's ``0.zip`` ...) has each archive as a folder named after its file, holding its
  members; other files there (the CSVs) stay files. A folder that holds folders is read as a
  folder: an archive beside them is not opened (a note says so).
* **Member names are untrusted**: an absolute name, ``..``, a backslash or a control character,
  a link, a device, a name given twice, or a member larger than :data:`MAX_MEMBER_BYTES` is
  skipped with its reason.

:class:`ArchiveFiles` is the conversion's reader of such a SRC (:mod:`shardgen.sources.files`):
a zip member is read by the offset its central directory gives; a tar member through
:mod:`tarfile` (a compressed tar is decompressed as it is read, once per worker for members
in archive order). Each worker process opens each archive once. A member's stamp is its
archive's: on resume an unchanged archive is trusted without reading it.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
import zlib
from typing import Any, BinaryIO, Iterator, Sequence

import xxhash

from ..errors import UsageError
from ..imaging.dicom import has_dicom_magic
from ..storage.location import Location
from .files import Read
from .folder import Listing, Tree, is_image, scan_layout
from .index import scan_index
from .items import Skip
from .stamps import stamp_of, unchanged

__all__ = ["ARCHIVE_SUFFIXES", "MAX_MEMBER_BYTES", "is_archive", "top_archives", "archive_source", "archive_tree", "scan_archives",
           "ArchiveFiles"]

#: File names read as archives (lower-cased).
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
#: Members larger than this (uncompressed bytes) are skipped: no image the build takes is that large.
MAX_MEMBER_BYTES = 1 << 30


def is_archive(name: str) -> bool:
    """``name`` ends with an archive suffix (:data:`ARCHIVE_SUFFIXES`)."""
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def top_archives(src: str) -> tuple[list[str], bool]:
    """``(archive names at the top of folder src, whether it also holds a visible folder)``."""
    try:
        entries = list(os.scandir(src))
    except OSError:
        return [], False
    archives = sorted(e.name for e in entries if is_archive(e.name) and not e.name.startswith(".") and e.is_file())
    has_dirs = any(e.is_dir() and not e.name.startswith(".") for e in entries)
    return archives, has_dirs


def archive_source(src: str) -> bool:
    """SRC is read through its archives: an archive file, or a folder whose top holds archives
    and no folder."""
    if os.path.isfile(src):
        return is_archive(src)
    archives, has_dirs = top_archives(src)
    return bool(archives) and not has_dirs


def open_archive(path: str, loc: Location | None = None) -> BinaryIO:
    """The archive's bytes as a seekable file: a local file, or (``loc``: SRC is a URL) an fsspec
    file whose reads are ranged GETs (the zip's central directory, then each member)."""
    if loc is None:
        return open(path, "rb")
    return loc.fs().open(path, "rb", block_size=_URL_BLOCK)


#: Read-ahead of an archive given as a URL (bytes per ranged GET).
_URL_BLOCK = 4 << 20


def _unsafe(name: str) -> str | None:
    """Why a member name cannot be a path under SRC (None: it can)."""
    if not name or name.startswith("/") or "\\" in name or any(ord(c) < 32 for c in name):
        return "unsafe member name (absolute, a backslash or a control character)"
    if ".." in name.split("/"):
        return "unsafe member name (..)"
    return None


def members(path: str, loc: Location | None = None) -> tuple[list[str], list[Skip]]:
    """The regular-file members of archive ``path`` (normalised names, in archive order) and the
    skipped ones.

    Raises:
        UsageError: the archive cannot be opened (one line naming it and why).
    """
    names: list[str] = []
    skipped: list[Skip] = []
    seen: set[str] = set()

    def take(raw: str, is_file: bool, size: int) -> None:
        shown = f"{path}/{raw}"
        why = _unsafe(raw)
        name = posixpath.normpath(raw) if why is None else raw
        if why is None and not is_file:
            why = "not a regular file (a link or a device)"
        if why is None and size > MAX_MEMBER_BYTES:
            why = f"member too large ({size:,} bytes)"
        if why is None and name in seen:
            why = "member name given twice in the archive (the first is used)"
        if why is not None:
            skipped.append(Skip(shown, why))
            return
        seen.add(name)
        names.append(name)

    try:
        if path.lower().endswith(".zip"):
            with open_archive(path, loc) as raw, zipfile.ZipFile(raw) as zf:
                for info in zf.infolist():
                    if not info.is_dir():
                        mode = (info.external_attr >> 16) & 0o170000
                        take(info.filename, mode in (0, 0o100000), info.file_size)
        else:
            with open_archive(path, loc) as raw, tarfile.open(fileobj=raw, mode="r:*") as tf:
                for info in tf:
                    if not info.isdir():
                        take(info.name, info.isreg(), info.size)
    except (OSError, zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, ValueError) as e:
        raise UsageError(f"SRC archive {path}: cannot be read ({_why(e)})") from None
    return names, skipped


def _why(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


class ArchiveTree(Tree):
    """A :class:`~shardgen.sources.folder.Tree` whose archives are folders of their members; a member
    without an image extension is sniffed for the DICOM preamble (its first 132 bytes)."""

    reader: "ArchiveFiles"

    def is_image(self, rel: str) -> bool:
        if not is_image(rel) and rel not in self._sniffed:
            self._sniffed[rel] = has_dicom_magic(self.reader.head(os.path.join(self.root, rel), 132))
        return is_image(rel) or self._sniffed[rel]


def archive_tree(src: str, skipped: list[Skip], loc: Location | None = None) -> ArchiveTree:
    """The tree of SRC read through its archives (:func:`archive_source` is true, or ``loc``: SRC
    is the URL of one archive); the archives read are ``tree.reader.archives``."""
    listing = Listing()
    if loc is not None or os.path.isfile(src):
        archives = [src]
        names, skips = members(src, loc)
        skipped += skips
        for n in names:
            listing.add(n, False)
    else:
        tops, _ = top_archives(src)
        archives = [os.path.join(src, a) for a in tops]
        for e in sorted(os.scandir(src), key=lambda e: e.name):
            if e.name not in tops and e.is_file():
                listing.add(e.name, False)
        for a, path in zip(tops, archives):
            listing.add(a, True)
            names, skips = members(path)
            skipped += skips
            for n in names:
                listing.add(f"{a}/{n}", False)
    tree = ArchiveTree.__new__(ArchiveTree)
    tree.root, tree.notes, tree._sniffed = src, [], {}
    tree.folders = listing.folders()
    tree.reader = ArchiveFiles(tuple(archives), loc)
    return tree


def scan_archives(src: str, index: str | None, regex, options=None, loc: Location | None = None):
    """:func:`shardgen.sources.folder.scan` for a SRC read through its archives (same layouts, same
    rules); the result's ``reader`` is the :class:`ArchiveFiles` the conversion reads with.

    Raises:
        UsageError: an archive cannot be read, no class folders, or any error of the index.
    """
    skipped: list[Skip] = []
    tree = archive_tree(src, skipped, loc)
    if index is not None:
        res = scan_index(src, index, regex, options, names=_TreeNames(tree), data=_index_in_archive(src, index, tree))
    else:
        res = scan_layout(tree, src, regex, skipped)
    res.items.compact()
    res.reader = tree.reader
    return res


def _index_in_archive(src: str, index: str, tree: ArchiveTree) -> bytes | None:
    """The bytes of ``--index`` when it names a member of SRC's archive (``--index
    CheXpert-v1.0-small/train.csv`` with SRC ``CheXpert-v1.0-small.zip``); None: a local file."""
    if os.path.exists(index) or not (tree.reader.loc is not None or os.path.isfile(src)):
        return None
    rel = posixpath.normpath(index.replace(os.sep, "/"))
    try:
        return tree.reader.read(f"{src}/{rel}")
    except OSError:
        raise UsageError(f"--index {index}: no such file, here or in SRC's archive {src}") from None


class _TreeNames:
    """The index's bare-name resolver over an archive tree: a path with a folder is taken as
    given; a bare file name is looked up among every member (first and second place named
    when it is in two)."""

    def __init__(self, tree: Tree) -> None:
        self.tree = tree
        self._where: dict[str, list[str]] | None = None

    def resolve(self, rel: str, where: str) -> str:
        if "/" in rel:
            return rel
        if self._where is None:
            self._where = {}
            for f in sorted(self.tree.iter_files("")):
                self._where.setdefault(f.rpartition("/")[2], []).append(f)
        found = self._where.get(rel, [])
        if len(found) > 1:
            raise UsageError(f"{where}: file name {rel} is ambiguous: found at {found[0]} and {found[1]} under SRC")
        return found[0] if found else rel


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

    def read(self, path: str) -> bytes:
        """The bytes of ``path``.

        Raises:
            OSError: it cannot be read (a missing member reads as a missing file).
        """
        archive, member = self.split(path)
        if archive is None:
            with open(path, "rb") as f:
                return f.read()
        if is_compressed_tar(archive):
            got = self._streamed([path])[path]
            if isinstance(got, BaseException):
                raise got
            return got
        try:
            h, infos = self._handle(archive)
            info = infos[member]
            if isinstance(h, zipfile.ZipFile):
                return h.read(info)
            f = h.extractfile(info)
            if f is None:
                raise OSError(f"{member}: not a regular file")
            return f.read()
        except KeyError:
            raise FileNotFoundError(2, os.strerror(2), path) from None
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, ValueError) as e:
            raise OSError(f"{_why(e)} (in {archive})") from None

    def head(self, path: str, n: int) -> bytes:
        """The first ``n`` bytes of ``path`` (empty when it cannot be read)."""
        try:
            return self.read(path)[:n]
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
                got, err = {}, OSError(f"{_why(e)} (in {archive})")
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
