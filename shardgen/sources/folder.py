"""Find the labelled images under SRC: layout detection, class and split discovery, CSV index.

The rules (documented for users in ``docs/layouts.md``):

* **One walk, each real folder once.** Symlinks are followed, but every real folder
  (device, inode) is listed once: a symlink back to a folder already listed (a loop) or a
  second path to the same folder is not followed, and the scan says so in a note. Hidden
  files and folders (``.name``) are ignored everywhere.
* **Kaggle classes at any depth.** A folder that has an ``images/`` subfolder is a class
  named after that folder, wherever it is found; only ``images/`` is read, and its siblings
  (``masks/``, ...) are never training data. The ``images`` component is dropped from keys.
* **Layouts.** ``kaggle`` when such folders exist (image files outside them are skipped
  with a reason); ``split`` when every top folder is a split name (train, test, val, valid,
  validation, dev) holding class folders (the same class rules apply inside each split);
  otherwise ``imagefolder``: each top folder is a class, read recursively.
* **The folder above the dataset.** When SRC holds exactly one folder (ignoring hidden
  entries and non-image files) and that folder is a multi-class layout, the build uses it,
  with a note (``using SRC/X, the only folder in SRC``).
* **Image files** have an image extension (``.dcm`` included), or start with the DICOM
  preamble (``DICM`` at byte 128: extensionless CR exports; 132 bytes read to tell).
* Or ``--index file.csv`` with columns ``path,label[,group][,split]`` (paths relative to
  SRC, normalised; a path listed twice with the same values is used once).
"""

from __future__ import annotations

import os
import re
from typing import Iterator

from ..errors import UsageError
from ..imaging.dicom import sniff_dicom
from ..imaging.image import IMAGE_EXTENSIONS
from .columns import ItemTable
from .items import Item, ScanResult, Skip, group_of

__all__ = ["SPLIT_NAMES", "Tree", "Listing", "scan", "scan_layout", "scan_tree", "rebase", "unwrap", "compile_group", "is_image", "is_visible"]

SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation", "dev"})
#: The Kaggle image folder name inside a class folder.
IMAGES = "images"
_MAX_NOTES = 3




def is_visible(name: str) -> bool:
    return not name.startswith(".")


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class Tree:
    """The visible folders and files under a root, each real folder listed once.

    ``folders`` maps a folder's relative path (``""`` for the root) to its sorted
    subfolder and file names. Folders reached a second time (a symlink loop, or two
    paths to one folder) are left out and described in ``notes``.
    """

    def __init__(self, root: str, skipped: list[Skip]) -> None:
        self.root = root
        self.folders: dict[str, tuple[list[str], list[str]]] = {}
        self.notes: list[str] = []
        self._sniffed: dict[str, bool] = {}
        self._walk(skipped)

    def _walk(self, skipped: list[Skip]) -> None:
        seen: dict[tuple[int, int], str] = {}
        loops: list[str] = []
        stack = [""]
        while stack:
            rel = stack.pop()
            path = os.path.join(self.root, rel) if rel else self.root
            try:
                st = os.stat(path)
                entries = sorted(os.scandir(path), key=lambda e: e.name)
            except OSError as e:
                skipped.append(Skip(rel or ".", f"unreadable folder: {e.strerror or e}"))
                continue
            ident = (st.st_dev, st.st_ino)
            if ident in seen:
                first = seen[ident]
                loop = first == "" or rel.startswith(first + "/")
                loops.append(f"{rel} leads back to {first or 'the root'} (symlink loop)" if loop
                             else f"{rel} is the same folder as {first}")
                continue
            seen[ident] = rel
            dirs, files = [], []
            for e in entries:
                if not is_visible(e.name):
                    continue
                try:
                    is_dir = e.is_dir()
                except OSError:
                    is_dir = False
                (dirs if is_dir else files).append(e.name)
            self.folders[rel] = (dirs, files)
            stack.extend(_join(rel, d) for d in reversed(dirs))
        if loops:
            more = f" (and {len(loops) - _MAX_NOTES} more)" if len(loops) > _MAX_NOTES else ""
            self.notes.append("listed each real folder once, not following: " + "; ".join(loops[:_MAX_NOTES]) + more)

    def is_image(self, rel: str) -> bool:
        """``rel`` has an image extension, or starts with the DICOM preamble (first 132 bytes read once)."""
        if not is_image(rel) and rel not in self._sniffed:
            self._sniffed[rel] = sniff_dicom(os.path.join(self.root, rel))
        return is_image(rel) or self._sniffed[rel]

    def subdirs(self, rel: str) -> list[str]:
        return self.folders.get(rel, ([], []))[0]

    def files(self, rel: str) -> list[str]:
        return self.folders.get(rel, ([], []))[1]

    def has(self, rel: str) -> bool:
        return rel in self.folders

    def all_files(self, rel: str, folders: set[str] | None = None) -> list[str]:
        """Every file under ``rel`` (recursive, sorted), as paths relative to the root; the
        folders visited go into ``folders`` when given."""
        return sorted(self.iter_files(rel, folders))

    def iter_files(self, rel: str, folders: set[str] | None = None) -> Iterator[str]:
        """:meth:`all_files`, unsorted, one at a time."""
        stack = [rel]
        while stack:
            d = stack.pop()
            if folders is not None:
                folders.add(d)
            yield from (_join(d, f) for f in self.files(d))
            stack.extend(_join(d, s) for s in self.subdirs(d) if self.has(_join(d, s)))

    def is_kaggle_class(self, rel: str) -> bool:
        return IMAGES in self.subdirs(rel) and self.has(_join(rel, IMAGES))


class Listing:
    """Folders built from a flat listing (an object store's keys, an archive's members): ``add``
    each path, then :meth:`folders` gives a :class:`Tree`'s ``folders`` (names sorted). Hidden
    paths (a component starting with ``.``) are left out."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[list[str], list[str]]] = {"": ([], [])}

    def _folder(self, rel: str) -> tuple[list[str], list[str]]:
        # not recursive: a closure that calls itself is a reference cycle, and the cycle kept
        # every name of the listing alive after the scan until the garbage collector ran
        folders, missing, up = self._folders, [], rel
        while up not in folders:
            missing.append(up)
            up = up.rpartition("/")[0]
        for m in reversed(missing):
            parent, _, name = m.rpartition("/")
            folders[parent][0].append(name)
            folders[m] = ([], [])
        return folders[rel]

    def add(self, rel: str, is_dir: bool) -> None:
        """One path (``/``-separated, relative to the listing's root)."""
        if any(not is_visible(p) for p in rel.split("/")):
            return
        if is_dir:
            self._folder(rel)
        else:
            parent, _, name = rel.rpartition("/")
            self._folder(parent)[1].append(name)

    def folders(self) -> dict[str, tuple[list[str], list[str]]]:
        for dirs, files in self._folders.values():  # in place: no second copy of every name list
            dirs[:] = sorted(set(dirs))
            files[:] = sorted(set(files))
        return self._folders


def _kaggle_dirs(tree: Tree, base: str) -> list[str]:
    """Folders strictly below ``base`` that have an ``images/`` subfolder (not descending into them)."""
    out = []
    stack = [_join(base, d) for d in reversed(tree.subdirs(base))]
    while stack:
        d = stack.pop()
        if not tree.has(d):
            continue
        if tree.is_kaggle_class(d):
            out.append(d)
            continue
        stack.extend(_join(d, s) for s in reversed(tree.subdirs(d)))
    return sorted(out)


def _classes_in(tree: Tree, base: str) -> tuple[str, list[tuple[str, str]]]:
    """``(kind, [(class name, class folder), ...])`` of the class folders under ``base``."""
    kag = _kaggle_dirs(tree, base)
    if kag:
        return "kaggle", [(d.rsplit("/", 1)[-1], d) for d in kag]
    return "imagefolder", [(d, _join(base, d)) for d in tree.subdirs(base) if tree.has(_join(base, d))]


def _is_split_layout(tree: Tree, base: str) -> bool:
    top = tree.subdirs(base)
    return bool(top) and all(d.lower() in SPLIT_NAMES and tree.subdirs(_join(base, d)) for d in top)


def _class_files(tree: Tree, cdir: str, used_dirs: set[str]) -> list[str]:
    """Files of one class folder: ``images/`` of a Kaggle class; else every file, but only
    ``images/`` of any nested folder that has one (masks are never training data). The
    folders whose files are taken go into ``used_dirs``."""
    if tree.is_kaggle_class(cdir):
        return tree.all_files(_join(cdir, IMAGES), used_dirs)
    used_dirs.add(cdir)
    out = [_join(cdir, f) for f in tree.files(cdir)]
    for s in tree.subdirs(cdir):
        sub = _join(cdir, s)
        if tree.has(sub):
            out.extend(_class_files(tree, sub, used_dirs))
    return sorted(out)


def _keypath(rel: str, cdir: str, tree: Tree) -> str | None:
    """``rel`` without the ``images`` component right below its Kaggle class folder."""
    prefix = _join(cdir, IMAGES) + "/"
    if tree.is_kaggle_class(cdir) and rel.startswith(prefix):
        return _join(cdir, rel[len(prefix):])
    return None


class _Collector:
    """Turns class folders into Items and Skips, remembering where each class came from."""

    def __init__(self, tree: Tree, regex: re.Pattern | None) -> None:
        self.tree, self.regex = tree, regex
        self.items = ItemTable()
        self.skipped: list[Skip] = []
        self.class_dirs: dict[str, list[str]] = {}
        self.used_dirs: set[str] = set()  # folders whose files a class took (see _class_files)

    def add_class(self, label: str, cdir: str, split: str | None = None) -> None:
        self.class_dirs.setdefault(label, []).append(cdir)
        for f in _class_files(self.tree, cdir, self.used_dirs):
            if self.tree.is_image(f):
                self.items.append(Item(f, label, split, group_of(self.regex, f), _keypath(f, cdir, self.tree)))
            else:
                ext = os.path.splitext(f)[1].lower()
                self.skipped.append(Skip(f, f"not an image file (extension {ext or 'none'!r})"))

    def stray_images(self, base: str, where: str) -> None:
        """Report image files under ``base`` that no class folder took."""
        stray = [f for f in self.tree.iter_files(base)
                 if f.rpartition("/")[0] not in self.used_dirs and self.tree.is_image(f)
                 and not _in_kaggle_sibling(f, self.tree)]
        self.skipped.extend(Skip(f, f"image outside any class folder ({where})") for f in sorted(stray))


def _in_kaggle_sibling(rel: str, tree: Tree) -> bool:
    """``rel`` lies in a sibling of a Kaggle ``images/`` folder (e.g. ``masks/``)."""
    parts = rel.split("/")
    return any(tree.is_kaggle_class("/".join(parts[:i])) for i in range(1, len(parts) - 1))




def compile_group(group: str | None) -> re.Pattern | None:
    if group is None:
        return None
    try:
        return re.compile(group)
    except re.error as e:
        raise UsageError(f"--group: not a valid regular expression: {e}") from None


def _multi_class(tree: Tree, base: str) -> bool:
    if tree.is_kaggle_class(base):
        return False
    return _is_split_layout(tree, base) or len({n for n, _ in _classes_in(tree, base)[1]}) >= 2


def _sole_folder(tree: Tree, base: str) -> str | None:
    """The one folder inside ``base`` when ``base`` holds nothing else that counts (no image
    files, not a Kaggle class itself); else None."""
    dirs = [d for d in tree.subdirs(base) if tree.has(_join(base, d))]
    if len(dirs) != 1 or any(tree.is_image(_join(base, f)) for f in tree.files(base)) or tree.is_kaggle_class(base):
        return None
    return _join(base, dirs[0])


def _leads_to_layout(tree: Tree, base: str) -> bool:
    """``base`` is a multi-class layout, or wraps one through single folders."""
    inner = _sole_folder(tree, base)
    return _multi_class(tree, base) or (inner is not None and _leads_to_layout(tree, inner))


def unwrap(tree: Tree, src: str, notes: list[str]) -> str:
    """The folder to build from: SRC, or the one folder in it when that leads to a multi-class layout."""
    base = ""
    while (inner := _sole_folder(tree, base)) is not None and _leads_to_layout(tree, inner):
        notes.append(f"using {os.path.join(src, inner)}, the only folder in {os.path.join(src, base) if base else src}")
        base = inner
    return base


def rebase(res: ScanResult, base: str) -> ScanResult:
    """Make every path in ``res`` relative to ``base`` (a folder inside the scan root)."""
    if not base:
        return res
    n = len(base) + 1

    def cut(p: str | None) -> str | None:
        return p[n:] if p is not None and p.startswith(base + "/") else p

    res.items = ItemTable.of(Item(cut(i.relpath), i.label, i.split, i.group, cut(i.keypath)) for i in res.items)
    res.skipped = [Skip(cut(s.path), s.reason) for s in res.skipped]
    res.class_dirs = {k: [cut(d) for d in v] for k, v in res.class_dirs.items()}
    return res


def scan_tree(tree: Tree, base: str, regex: re.Pattern | None, name: str) -> ScanResult:
    """Detect the layout of ``base`` in ``tree`` and collect its items."""
    col = _Collector(tree, regex)
    if tree.is_kaggle_class(base):
        col.add_class(name, base)
        layout, splits, single = "kaggle", None, f"SRC itself is a Kaggle class folder (it has {IMAGES}/)"
    elif _is_split_layout(tree, base):
        layout, splits, single = "split", [], "every split holds one class folder"
        for sp in tree.subdirs(base):
            splits.append(sp)
            for label, cdir in _classes_in(tree, _join(base, sp))[1]:
                col.add_class(label, cdir, sp)
        col.stray_images(base, "a split folder's files must be in <split>/<class>/")
    else:
        (layout, classes), splits = _classes_in(tree, base), None
        for label, cdir in classes:
            col.add_class(label, cdir)
        where = f"no <class>/{IMAGES}/ above it" if layout == "kaggle" else "top-level files have no class"
        col.stray_images(base, where)
        single = "SRC holds one class folder" if layout == "imagefolder" else "one folder with images/ was found"
    return ScanResult(layout, col.items.sorted(), col.skipped, sorted(col.class_dirs), splits,
                      class_dirs=col.class_dirs, single_reason=single)


def scan(src: str, index: str | None = None, group: str | None = None, options=None) -> ScanResult:
    """Find every input image under ``src`` (see the module docstring for the rules).

    Args:
        src: the source folder.
        index: optional CSV (``path,label[,group][,split]``) used instead of folder names.
        group: optional regex; files whose relative path gives the same match (first
            capture group if any) share a split.
        options: the index's :class:`~shardgen.sources.index.IndexOptions` (columns, multi-label,
            split lists); None: the defaults.

    Raises:
        UsageError: ``src`` is missing or not a folder, or no class folders are found.
    """
    if not os.path.isdir(src):
        raise UsageError(f"SRC {src}: no such folder")
    regex = compile_group(group)
    if index is not None:
        from .index import scan_index

        res = scan_index(src, index, regex, options)
        res.items.compact()
        return res
    skipped: list[Skip] = []
    return scan_layout(Tree(src, skipped), src, regex, skipped)


def scan_layout(tree: Tree, src: str, regex: re.Pattern | None, skipped: list[Skip]) -> ScanResult:
    """The layout of a walked SRC: the wrapper folder unwrapped, classes, splits and items.

    Raises:
        UsageError: no class folders are found.
    """
    notes = list(tree.notes)
    base = unwrap(tree, src, notes)
    if not tree.subdirs(base):
        raise UsageError(f"SRC {src}: no class folders found (expected <class>/images/*, <class>/* or <split>/<class>/*)")
    name = os.path.basename(os.path.realpath(os.path.join(src, base) if base else src))
    res = scan_tree(tree, base, regex, name)
    res.skipped = skipped + res.skipped
    res = rebase(res, base)
    res.root = os.path.join(src, base) if base else src
    res.notes = notes
    res.items.compact()
    for label, dirs in sorted(res.class_dirs.items()):
        if res.layout != "split" and len(dirs) > 1:
            res.notes.append(f"class {label!r} is in {len(dirs)} folders ({', '.join(dirs[:3])}): merged into one class")
    return res
