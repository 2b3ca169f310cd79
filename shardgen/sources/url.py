"""The scan of a SRC given as a URL: one recursive listing, then the same layout rules as a folder."""

from __future__ import annotations

from typing import Any, Callable

from ..errors import UsageError
from ..imaging.dicom import has_dicom_magic
from ..storage.location import Location
from ..storage.protocols import protocols_of
from .folder import Listing, Tree, is_image, is_visible

__all__ = ["RemoteBareNames", "scan_url"]


class _RemoteTree(Tree):
    """A :class:`~shardgen.sources.folder.Tree` filled from a listing; files without an image extension are
    sniffed for the DICOM preamble with one ranged read each, as the local tree reads them."""

    fs: Any

    def is_image(self, rel: str) -> bool:
        if not is_image(rel) and rel not in self._sniffed:
            try:
                head = self.fs.cat_file(f"{self.root}/{rel}", start=0, end=132)
            except OSError:
                head = b""
            self._sniffed[rel] = has_dicom_magic(head)
        return is_image(rel) or self._sniffed[rel]


def _remote_tree(loc: Location):
    """A :class:`~shardgen.sources.folder.Tree` of the objects under ``loc`` (one recursive listing)."""
    fs = loc.fs()
    root = fs._strip_protocol(loc.url).rstrip("/")
    listing = Listing()
    _list_into(fs, root, listing.add)
    tree = _RemoteTree.__new__(_RemoteTree)
    tree.root, tree.notes, tree._sniffed, tree.fs = loc.url, [], {}, fs
    tree.folders = listing.folders()
    return tree


def _list_into(fs: Any, root: str, add: Callable[[str, bool], None]) -> None:
    """``add(rel, is_dir)`` for every object (and folder) under ``root``, ``rel`` its path
    relative to ``root``.

    On S3 the listing streams, a page of 1,000 keys at a time, through s3fs's own paginated
    listing (``_iterdir``, the async generator behind its ``ls``; each page retried as any
    s3fs request): s3fs's ``find`` would hold every object's info dict (about 1 KB) and keep
    them all in its listings cache for the life of the process, 1 GB per million objects.
    """
    def relative(path: str, is_dir: bool) -> None:
        if path.startswith(root + "/") and len(path) > len(root) + 1:
            add(path[len(root) + 1:], is_dir)

    iterdir = getattr(fs, "_iterdir", None) if "s3" in protocols_of(fs) else None
    if iterdir is None:
        try:
            found = fs.find(root, withdirs=True, detail=True)
        except FileNotFoundError:
            found = {}
        for path, info in found.items():
            relative(path, info.get("type") == "directory")
        return
    from fsspec.asyn import sync

    bucket, key, _ = fs.split_path(root)

    async def walk() -> None:
        async for info in iterdir(bucket, delimiter="", prefix=f"{key}/" if key else ""):
            name = info["name"]
            relative(name.rstrip("/"), name.endswith("/") or info.get("type") == "directory")

    try:
        sync(fs.loop, walk)
    except FileNotFoundError:
        pass


class RemoteBareNames:
    """:class:`shardgen.sources.index._BareNames` for a SRC URL: a bare file name of the index is looked
    up in one streaming listing of SRC (made on first need), with the local walk's rules (hidden
    folders left out; of two places, the first and second in the walk's order are named).

    Memory: one relative path per object, in lists keyed by file name, as the local walk holds.
    """

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self._where: dict[str, list[str]] | None = None

    def _list(self) -> dict[str, list[str]]:
        fs = self.loc.fs()
        root = fs._strip_protocol(self.loc.url).rstrip("/")
        where: dict[str, list[str]] = {}

        def add(rel: str, is_dir: bool) -> None:
            if is_dir:
                return
            parent, _, name = rel.rpartition("/")
            if parent and any(not is_visible(p) for p in parent.split("/")):
                return
            where.setdefault(name, []).append(rel)

        _list_into(fs, root, add)
        return where

    def resolve(self, rel: str, where: str) -> str:
        """``rel``, or where its bare name lies under SRC when it is not directly in SRC."""
        if "/" in rel:
            return rel
        if self._where is None:
            self._where = self._list()
        found = self._where.get(rel, [])
        if rel in found:
            return rel
        if len(found) > 1:
            first, second = sorted(found, key=lambda p: p.split("/")[:-1])[:2]  # os.walk's order
            raise UsageError(f"{where}: file name {rel} is ambiguous: found at {first} and {second} under SRC")
        return found[0] if found else rel


def _scan_index_url(loc: Location, index: str, regex, options):
    """The ScanResult of ``--index`` with a SRC URL: the paths are relative to SRC as given."""
    from .index import scan_index

    res = scan_index(loc.url, index, regex, options, names=RemoteBareNames(loc))
    res.items.compact()
    res.root = loc.url
    return res


def scan_url(loc: Location, index: str | None, group: str | None, options=None):
    """:func:`shardgen.sources.folder.scan` for a SRC given as a URL (same layouts, same rules).

    Args:
        loc: SRC.
        index: the ``--index`` CSV (a local file), or None.
        group: the ``--group`` regex, or None.
        options: the index's :class:`~shardgen.sources.index.IndexOptions` (None: the defaults).

    Raises:
        UsageError: nothing under the URL, no class folders, or any error of :func:`~shardgen.sources.index.scan_index`.
    """
    from .folder import compile_group, rebase, scan_tree, unwrap

    regex = compile_group(group)
    if index is not None:
        return _scan_index_url(loc, index, regex, options)
    tree = _remote_tree(loc)
    if not tree.subdirs("") and not tree.files(""):
        raise UsageError(f"SRC {loc.url}: nothing found there")
    notes: list[str] = []
    base = unwrap(tree, loc.url, notes)
    if not tree.subdirs(base):
        raise UsageError(f"SRC {loc.url}: no class folders found (expected <class>/images/*, <class>/* or "
                         "<split>/<class>/*)")
    name = (f"{loc.url}/{base}" if base else loc.url).rstrip("/").rsplit("/", 1)[-1]
    res = rebase(scan_tree(tree, base, regex, name), base)
    res.root = loc.join(base)
    res.notes = notes
    for label, dirs in sorted(res.class_dirs.items()):
        if res.layout != "split" and len(dirs) > 1:
            res.notes.append(f"class {label!r} is in {len(dirs)} folders ({', '.join(dirs[:3])}): "
                             "merged into one class")
    return res
