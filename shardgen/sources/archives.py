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

:class:`~shardgen.sources.archive_files.ArchiveFiles` (:mod:`.archive_files`) is the conversion's
reader of such a SRC.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
import zipfile
import zlib

from ..errors import UsageError
from ..imaging.dicom import has_dicom_magic
from ..storage.location import Location
from .archive_files import ArchiveFiles, error_text, open_archive
from .folder import Listing, Tree, is_image, scan_layout
from .index import scan_index
from .items import Skip

__all__ = ["ARCHIVE_SUFFIXES", "MAX_MEMBER_BYTES", "is_archive", "top_archives", "archive_source", "archive_tree",
           "scan_archives"]

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
        raise UsageError(f"SRC archive {path}: cannot be read ({error_text(e)})") from None
    return names, skipped


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
