"""``--index file.csv``: labelled images listed in a CSV instead of found by folder names.

Columns ``path,label[,group][,split]`` (header required, UTF-8, a BOM is fine); ``--columns
path=COL,label=COL,group=COL,split=COL`` names other columns for these roles (NIH:
``path=Image Index,label=Finding Labels,group=Patient ID``). Paths are relative to SRC (or
absolute, inside SRC) and normalised (``./a//b.png`` is ``a/b.png``). A bare file name
that is not directly in SRC is looked up anywhere under SRC (one walk, on first need): NIH
ships ``images_001/images/...`` to ``images_012/``; a name found in two places is a usage
error naming both. A path listed twice with the same label, group and split is used once
(with a note); listed twice with different values, or pointing outside SRC, is a usage
error naming the line. With a SRC URL (:func:`shardgen.sources.url.scan_url`) the CSV stays a
local file, bare names are looked up in one listing of SRC, and an absolute path is a usage error.

With ``--label_sep`` the label cell holds a set of labels (``Cardiomegaly|Effusion``) and
the build is multi-label; ``--no_finding`` names the value meaning "no positive class"
(an all-zero target, not a class). ``--split_lists`` (:mod:`shardgen.sources.splitlists`) puts
the listed images in the named splits.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import os
import posixpath
import re
from array import array
from dataclasses import dataclass
import zipfile
from typing import IO, Iterator

import numpy as np

from ..errors import UsageError
from ..storage import is_url
from .columns import ItemTable, iter_ints
from .items import Item, ScanResult, group_of

__all__ = ["IndexOptions", "scan_index"]


@dataclass(frozen=True)
class IndexOptions:
    """How to read the CSV index (from :class:`~shardgen.build.config.BuildConfig`).

    Attributes:
        columns: ``(role, column)`` pairs overriding the default column of a role.
        label_sep: separator of the labels in a label cell (multi-label), or None.
        no_finding: the label value meaning no positive class, or None.
        split_lists: ``(split, file)`` pairs of official split files, or None.
    """

    columns: tuple[tuple[str, str], ...] = ()
    label_sep: str | None = None
    no_finding: str | None = None
    split_lists: tuple[tuple[str, str], ...] | None = None

    @classmethod
    def of(cls, cfg) -> "IndexOptions":
        return cls(cfg.column_map, cfg.label_sep, cfg.no_finding, cfg.split_list_files)

    def column(self, role: str) -> str:
        return dict(self.columns).get(role, role)


def _normalise(src: str, path: str, where: str) -> str:
    if os.path.isabs(path) and is_url(src):
        raise UsageError(f"{where}: {path} is a local path; with a SRC URL the paths are relative to SRC {src}")
    rel = os.path.relpath(path, src) if os.path.isabs(path) else path
    rel = posixpath.normpath(rel.replace(os.sep, "/"))
    if rel == "." or rel == ".." or rel.startswith("../"):
        raise UsageError(f"{where}: {path} is outside SRC {src}")
    return rel


class _BareNames:
    """Finds a bare file name anywhere under SRC; SRC is walked once, on first need.

    :class:`shardgen.sources.url.RemoteBareNames` does the same for a SRC URL from one listing.
    """

    def __init__(self, src: str) -> None:
        self.src = src
        self._where: dict[str, list[str]] | None = None

    def _walk(self) -> dict[str, list[str]]:
        where: dict[str, list[str]] = {}
        for top, dirs, files in os.walk(self.src):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            rel_top = os.path.relpath(top, self.src).replace(os.sep, "/")
            for f in files:
                where.setdefault(f, []).append(f if rel_top == "." else f"{rel_top}/{f}")
        return where

    def resolve(self, rel: str, where: str) -> str:
        """``rel``, or where its bare name lies under SRC when it is not directly in SRC."""
        if "/" in rel or os.path.lexists(os.path.join(self.src, rel)):
            return rel
        if self._where is None:
            self._where = self._walk()
        found = self._where.get(rel, [])
        if len(found) > 1:
            raise UsageError(f"{where}: file name {rel} is ambiguous: found at {found[0]} and {found[1]} under SRC")
        return found[0] if found else rel


def _label_set(cell: str, opts: IndexOptions, where: str) -> tuple[str, tuple[str, ...] | None]:
    """``(label, labels)`` of a label cell: multi-label cells give their sorted set of names."""
    if opts.label_sep is None:
        return cell, None
    parts = sorted({p.strip() for p in cell.split(opts.label_sep)} - {""})
    if opts.no_finding is not None and opts.no_finding in parts:
        if len(parts) > 1:
            raise UsageError(f"{where}: {opts.no_finding!r} together with other labels in {cell!r}")
        return opts.no_finding, ()
    if not parts:
        raise UsageError(f"{where}: no label in {cell!r}")
    return opts.label_sep.join(parts), tuple(parts)


def _open_text(index: str, data: bytes | None = None) -> IO[str]:
    """The CSV ``index`` as text: a ``.csv``, a ``.csv.gz`` or a ``.csv.zip`` (its one ``.csv``);
    ``data``: its bytes, already read (a member of SRC's archive).

    Raises:
        UsageError: it cannot be opened, or a zip does not hold exactly one CSV.
    """
    name = index.lower()
    try:
        raw: IO[bytes] = io.BytesIO(data) if data is not None else open(index, "rb")
        if name.endswith(".gz"):
            raw = gzip.GzipFile(fileobj=raw)
        elif name.endswith(".zip"):
            zf = zipfile.ZipFile(raw)
            csvs = [n for n in zf.namelist() if n.lower().endswith(".csv") and not n.endswith("/")]
            if len(csvs) != 1:
                raise UsageError(f"--index {index}: the zip holds {len(csvs)} CSV files, not one")
            raw = zf.open(csvs[0])
    except OSError as e:
        raise UsageError(f"--index {index}: cannot open ({e.strerror or e})") from None
    except zipfile.BadZipFile as e:
        raise UsageError(f"--index {index}: not a readable zip ({e})") from None
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")


@contextlib.contextmanager
def _open_rows(index: str, opts: IndexOptions,
               data: bytes | None = None) -> Iterator[tuple[dict[str, str], Iterator[tuple[int, dict]]]]:
    """``(role -> column of the roles the CSV has, its rows with line numbers)``: the header
    is checked here, the rows are read one at a time."""
    f = _open_text(index, data)
    with f:
        reader = csv.DictReader(f)
        try:
            cols = [c.strip() for c in (reader.fieldnames or [])]
        except (UnicodeDecodeError, csv.Error, OSError, EOFError) as e:
            raise UsageError(f"--index {index}: not a readable UTF-8 CSV ({e})") from None
        named = dict(opts.columns)
        for role in ("path", "label"):
            if opts.column(role) not in cols:
                how = f"--columns names {named[role]!r} for {role}" if role in named else f"needs a {role!r} column"
                raise UsageError(f"--index {index}: {how}, but the header has {cols}")
        for role, col in named.items():
            if col not in cols:
                raise UsageError(f"--index {index}: --columns names {col!r} for {role}, but the header has {cols}")
        reader.fieldnames = cols
        roles = {r: opts.column(r) for r in ("path", "label", "group", "split") if opts.column(r) in cols}

        def rows() -> Iterator[tuple[int, dict]]:
            try:
                yield from enumerate(reader, start=2)
            except (UnicodeDecodeError, csv.Error, OSError, EOFError) as e:
                raise UsageError(f"--index {index}: not a readable UTF-8 CSV ({e})") from None

        yield roles, rows()


def _cell(row: dict, roles: dict[str, str], role: str) -> str:
    col = roles.get(role)
    return (row.get(col) or "").strip() if col is not None else ""


def _unique(table: ItemTable, lines: array, index: str) -> tuple[ItemTable, int]:
    """The rows' items sorted by path, each path once; and how many rows repeated one.

    Raises:
        UsageError: a path listed again with other values (the earliest such line is named).
    """
    keep, conflicts, prev, first = array("q"), [], None, -1
    for i in iter_ints(table.sort_order()):  # stable: the rows of one path in line order
        rel = table.relpaths[i]
        if rel != prev:
            keep.append(i)
            prev, first = rel, i
        elif table[i] != table[first]:
            conflicts.append((lines[i], rel, lines[first]))
    if conflicts:
        n, rel, n0 = min(conflicts)
        raise UsageError(f"--index {index}: line {n}: {rel} is listed again with other values than on line {n0}")
    repeats = len(table) - len(keep)
    order = np.frombuffer(keep, dtype=np.int64)
    same = repeats == 0 and bool((order == np.arange(len(order))).all())
    if not same:
        table.keep_only(order)
    return table, repeats


def scan_index(src: str, index: str, regex: re.Pattern | None, options: IndexOptions | None = None,
               names=None, data: bytes | None = None) -> ScanResult:
    """Read the CSV index; see the module docstring.

    Args:
        src: the source folder (or URL: then ``names`` resolves the bare names).
        index: the CSV file (a local path).
        regex: the ``--group`` regex, or None.
        options: how to read the CSV (None: the defaults).
        names: the bare-name resolver (``resolve(rel, where) -> rel``); None: a walk of the folder ``src``.
        data: the CSV's bytes when they were read already (a member of SRC's archive); None: read ``index``.

    Raises:
        UsageError: unreadable CSV, missing columns, empty cells, conflicting duplicates,
            paths outside SRC, an ambiguous bare file name, a split column filled for some
            rows only, or bad split lists.
    """
    opts = options or IndexOptions()
    bare = names if names is not None else _BareNames(src)
    table, lines = ItemTable(), array("q")
    with _open_rows(index, opts, data) as (roles, rows):
        for n, row in rows:
            path, cell = _cell(row, roles, "path"), _cell(row, roles, "label")
            where = f"--index {index}: line {n}"
            if not path or not cell:
                raise UsageError(f"{where}: empty path or label")
            given = _normalise(src, path, where)
            rel = bare.resolve(given, where)
            label, labels = _label_set(cell, opts, where)
            group = _cell(row, roles, "group") or group_of(regex, rel)
            # the key comes from the CSV's path, not from where the file was found: the same corpus
            # packaged otherwise (NIH's tarballs, Kaggle's folders) is the same dataset
            table.append(Item(rel, label, _cell(row, roles, "split") or None, group,
                              given if given != rel else None, labels))
            lines.append(n)
    out, repeats = _unique(table, lines, index)
    splits_given = set(out.split_names) | ({None} if (out.split_codes() < 0).any() else set())
    if None in splits_given and len(splits_given) > 1:
        raise UsageError(f"--index {index}: the split column is filled for some rows but not all")
    notes = [f"--index lists {repeats} path(s) more than once with the same values: each used once"] if repeats else []
    skipped = []
    if opts.split_lists is not None:
        if splits_given - {None}:
            raise UsageError(f"--index {index}: has a split column, and --split_lists also gives the splits; "
                             "use one of them")
        from .splitlists import apply_split_lists

        out, skipped, list_notes = apply_split_lists(out, opts.split_lists)
        notes += list_notes
        splits = [name for name, _ in opts.split_lists]
    else:
        splits = sorted(s for s in splits_given if s) or None
    if opts.label_sep is not None:
        labels = sorted({c for ls in out.label_sets for c in ls})
    else:
        labels = sorted(out.label_names)
    doubts = []
    if opts.no_finding is not None and not any(len(ls) == 0 for ls in out.label_sets):
        doubts.append(f"--no_finding {opts.no_finding!r} matches no label cell of --index {index}, so no image "
                      "is a no-finding image; is the value spelt as in the CSV?")
    return ScanResult("index", out, skipped, labels, splits, root=src, notes=notes,
                      single_reason="the index names one label", multilabel=opts.label_sep is not None,
                      doubts=doubts)
