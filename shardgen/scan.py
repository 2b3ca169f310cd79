"""Find the labelled images under SRC: layout detection, class and split discovery, CSV index.

Layouts recognised on their own (hidden files and folders are ignored everywhere):

* ``kaggle``: ``<class>/images/*`` (the COVID-19 Radiography Database); sibling folders
  such as ``masks/`` and files beside the class folders are not read.
* ``split``: ``<split>/<class>/...`` where every top-level folder is a split name
  (train, test, val, valid, validation, dev); the existing split is kept.
* ``imagefolder``: ``<class>/**/*`` (nested folders allowed).

Or ``--index file.csv`` with columns ``path,label[,group][,split]`` (paths relative to SRC).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass

from .errors import UsageError
from .image import IMAGE_EXTENSIONS

__all__ = ["Item", "Skip", "ScanResult", "SPLIT_NAMES", "scan"]

SPLIT_NAMES = frozenset({"train", "test", "val", "valid", "validation", "dev"})


@dataclass(frozen=True)
class Item:
    """One input image: ``relpath`` (``/``-separated, relative to SRC), its label and optional split/group."""

    relpath: str
    label: str
    split: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Skip:
    """An input that was not used, and why (one line of ``skipped.jsonl``)."""

    path: str
    reason: str

    def to_json(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class ScanResult:
    layout: str
    items: list[Item]
    skipped: list[Skip]
    labels: list[str]          # every label found, sorted
    splits: list[str] | None   # split names of a pre-split source, else None


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _list_files(root: str, rel: str, skipped: list[Skip]) -> list[str]:
    """All visible files under ``root/rel`` (recursive), as sorted relative paths."""
    out: list[str] = []
    stack = [rel]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(root, d)), key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skip(d, f"unreadable folder: {e.strerror or e}"))
            continue
        subdirs = []
        for e in entries:
            if not _visible(e.name):
                continue
            r = f"{d}/{e.name}" if d else e.name
            try:
                is_dir = e.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                subdirs.append(r)
            else:
                out.append(r)
        stack.extend(reversed(subdirs))
    return sorted(out)


def _subdirs(path: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(path) if _visible(e.name) and e.is_dir())
    except OSError as e:
        raise UsageError(f"{path}: cannot list folder ({e.strerror or e})") from None


def _images_of_class(root: str, rel: str, skipped: list[Skip], kaggle: bool) -> list[str]:
    """Image files of one class folder; others are reported as skipped."""
    base = f"{rel}/images" if kaggle else rel
    files = _list_files(root, base, skipped)
    images = []
    for f in files:
        ext = os.path.splitext(f)[1].lower()
        if ext in IMAGE_EXTENSIONS:
            images.append(f)
        else:
            skipped.append(Skip(f, f"not an image file (extension {ext or 'none'!r})"))
    return images


def _group_of(regex: re.Pattern | None, relpath: str) -> str | None:
    if regex is None:
        return None
    m = regex.search(relpath)
    if not m:
        return None
    return m.group(1) if m.groups() else m.group(0)


def _compile_group(group: str | None) -> re.Pattern | None:
    if group is None:
        return None
    try:
        return re.compile(group)
    except re.error as e:
        raise UsageError(f"--group: not a valid regular expression: {e}") from None


def _scan_index(src: str, index: str, regex: re.Pattern | None) -> ScanResult:
    try:
        f = open(index, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise UsageError(f"--index {index}: cannot open ({e.strerror or e})") from None
    items: list[Item] = []
    skipped: list[Skip] = []
    with f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or "label" not in cols:
            raise UsageError(f"--index {index}: needs a header with columns path,label[,group][,split]; got {cols}")
        reader.fieldnames = cols
        seen = set()
        for n, row in enumerate(reader, start=2):
            path = (row.get("path") or "").strip()
            label = (row.get("label") or "").strip()
            if not path or not label:
                raise UsageError(f"--index {index}: line {n}: empty path or label")
            rel = os.path.relpath(path, src) if os.path.isabs(path) else path
            rel = rel.replace(os.sep, "/")
            if rel in seen:
                raise UsageError(f"--index {index}: line {n}: {path} is listed twice")
            seen.add(rel)
            group = (row.get("group") or "").strip() or _group_of(regex, rel)
            split = (row.get("split") or "").strip() or None
            items.append(Item(rel, label, split, group))
    splits_given = {i.split for i in items}
    if None in splits_given and len(splits_given) > 1:
        raise UsageError(f"--index {index}: the split column is filled for some rows but not all")
    splits = sorted(s for s in splits_given if s) or None
    items.sort(key=lambda i: i.relpath)
    return ScanResult("index", items, skipped, sorted({i.label for i in items}), splits)


def scan(src: str, index: str | None = None, group: str | None = None) -> ScanResult:
    """Find every input image under ``src``.

    Args:
        src: the source folder.
        index: optional CSV (``path,label[,group][,split]``) used instead of folder names.
        group: optional regex; files whose relative path gives the same match (first
            capture group if any) share a split.

    Raises:
        UsageError: ``src`` is missing or not a folder, or no class folders are found.
    """
    if not os.path.isdir(src):
        raise UsageError(f"SRC {src}: no such folder")
    regex = _compile_group(group)
    if index is not None:
        return _scan_index(src, index, regex)
    top = _subdirs(src)
    if not top:
        raise UsageError(f"SRC {src}: no class folders found (expected <class>/images/*, <class>/* or <split>/<class>/*)")
    skipped: list[Skip] = []
    items: list[Item] = []
    kaggle_classes = [d for d in top if os.path.isdir(os.path.join(src, d, "images"))]
    if kaggle_classes:
        for d in kaggle_classes:
            for f in _images_of_class(src, d, skipped, kaggle=True):
                items.append(Item(f, d, None, _group_of(regex, f)))
        return ScanResult("kaggle", items, skipped, sorted(kaggle_classes), None)
    if all(d.lower() in SPLIT_NAMES for d in top) and all(_subdirs(os.path.join(src, d)) for d in top):
        labels = set()
        for sp in top:
            for c in _subdirs(os.path.join(src, sp)):
                labels.add(c)
                kag = os.path.isdir(os.path.join(src, sp, c, "images"))
                for f in _images_of_class(src, f"{sp}/{c}", skipped, kaggle=kag):
                    items.append(Item(f, c, sp, _group_of(regex, f)))
            for f in os.listdir(os.path.join(src, sp)):
                p = os.path.join(src, sp, f)
                if _visible(f) and not os.path.isdir(p):
                    skipped.append(Skip(f"{sp}/{f}", "file outside any class folder"))
        items.sort(key=lambda i: i.relpath)
        return ScanResult("split", items, skipped, sorted(labels), list(top))
    for d in top:
        for f in _images_of_class(src, d, skipped, kaggle=False):
            items.append(Item(f, d, None, _group_of(regex, f)))
    return ScanResult("imagefolder", items, skipped, sorted(top), None)
