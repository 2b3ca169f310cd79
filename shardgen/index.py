"""``--index file.csv``: labelled images listed in a CSV instead of found by folder names.

Columns ``path,label[,group][,split]`` (header required, UTF-8, a BOM is fine). Paths are
relative to SRC (or absolute, inside SRC) and normalised (``./a//b.png`` is ``a/b.png``).
A path listed twice with the same label, group and split is used once (with a note); listed
twice with different values, or pointing outside SRC, is a usage error naming the line.
"""

from __future__ import annotations

import csv
import os
import posixpath
import re

from .errors import UsageError
from .scan import Item, ScanResult, _group_of

__all__ = ["scan_index"]


def _normalise(src: str, path: str, where: str) -> str:
    rel = os.path.relpath(path, src) if os.path.isabs(path) else path
    rel = posixpath.normpath(rel.replace(os.sep, "/"))
    if rel == "." or rel == ".." or rel.startswith("../"):
        raise UsageError(f"{where}: {path} is outside SRC {src}")
    return rel


def scan_index(src: str, index: str, regex: re.Pattern | None) -> ScanResult:
    """Read the CSV index; see the module docstring.

    Raises:
        UsageError: unreadable CSV, missing columns, empty cells, conflicting duplicates,
            paths outside SRC, or a split column filled for some rows only.
    """
    try:
        f = open(index, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise UsageError(f"--index {index}: cannot open ({e.strerror or e})") from None
    items: dict[str, Item] = {}
    repeats = 0
    with f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "path" not in cols or "label" not in cols:
            raise UsageError(f"--index {index}: needs a header with columns path,label[,group][,split]; got {cols}")
        reader.fieldnames = cols
        try:
            rows = list(enumerate(reader, start=2))
        except (UnicodeDecodeError, csv.Error) as e:
            raise UsageError(f"--index {index}: not a readable UTF-8 CSV ({e})") from None
    first_line: dict[str, int] = {}
    for n, row in rows:
        path = (row.get("path") or "").strip()
        label = (row.get("label") or "").strip()
        where = f"--index {index}: line {n}"
        if not path or not label:
            raise UsageError(f"{where}: empty path or label")
        rel = _normalise(src, path, where)
        group = (row.get("group") or "").strip() or _group_of(regex, rel)
        split = (row.get("split") or "").strip() or None
        item = Item(rel, label, split, group)
        if rel in items:
            if items[rel] != item:
                raise UsageError(f"{where}: {path} is listed again with other values than on line {first_line[rel]}")
            repeats += 1
            continue
        items[rel] = item
        first_line[rel] = n
    splits_given = {i.split for i in items.values()}
    if None in splits_given and len(splits_given) > 1:
        raise UsageError(f"--index {index}: the split column is filled for some rows but not all")
    splits = sorted(s for s in splits_given if s) or None
    out = sorted(items.values(), key=lambda i: i.relpath)
    notes = [f"--index lists {repeats} path(s) more than once with the same values: each used once"] if repeats else []
    labels = sorted({i.label for i in out})
    res = ScanResult("index", out, [], labels, splits, root=src, notes=notes,
                     single_reason="the index names one label")
    return res
