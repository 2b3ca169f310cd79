"""``--split_lists train=FILE,test=FILE``: official split files decide each image's split.

A list file holds one entry per line (UTF-8, blank lines ignored): a file name
(``00000001_000.png``, matched against the base names of the index's images) or a path
relative to SRC (``images_001/images/00000001_000.png``, matched against the index's
resolved paths). Every image of the index that a list names goes in that list's split;
an image of the index that no list names is skipped with a reason (``skipped.jsonl``).
Entries that name no image of the index (a subset of the corpus was indexed) are counted
in a note, and so are groups (``group`` column or ``--group``) that the lists put in more
than one split: the lists are official, so they win, but that is patient leakage. An
image named twice, in one list or in two, is a usage error naming both lines, as is a
bare name that two images of the index share.

Memory: no Python object per image or per entry. The lists are read a MiB at a time; an
entry is found by its hash in a sorted array of the hashes of the images' base names (or
paths), the strings compared on a hit; what is kept per entry is its image number and line
(8 bytes). Repeats are found by sorting those numbers, and the few entries involved are
read again for the message; the splits are set on the :class:`~shardgen.sources.columns.ItemTable`
as codes, and the unlisted rows dropped column by column.
"""

from __future__ import annotations

import bisect
import posixpath
from array import array
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..errors import UsageError
from .columns import ItemTable, iter_ints
from .items import Skip

__all__ = ["NOT_LISTED", "read_list", "iter_list", "apply_split_lists"]

#: The skip reason of an index image that no split list names.
NOT_LISTED = "in no --split_lists file"
#: Characters of a list file read at a time.
_CHUNK = 1 << 20
#: Entries looked up at a time.
_BATCH = 16384
#: The hash of base names, paths and entries (a test replaces it by one that collides often).
_hash = hash


def _normal(entry: str) -> str:
    return posixpath.normpath(entry.replace("\\", "/")).lstrip("/")


def read_list(path: str) -> list[tuple[int, str]]:
    """``[(line number, entry), ...]`` of one list file (blank lines left out), read whole.

    Raises:
        UsageError: the file cannot be read as UTF-8 text.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"--split_lists {path}: cannot open ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"--split_lists {path}: not UTF-8 text ({e})") from None
    out = []
    for n, line in enumerate(lines, start=1):
        entry = line.strip()
        if entry:
            out.append((n, _normal(entry)))
    return out


def _stream(path: str) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8-sig") as f:  # universal newlines: "\r\n" and "\r" arrive as "\n"
        n, carry = 0, ""
        while True:
            chunk = f.read(_CHUNK)
            text = carry + chunk
            if not text:
                return
            parts = text.splitlines(keepends=True)
            last = parts[-1]
            carry = parts.pop() if chunk and last.splitlines()[0] == last else ""  # may go on in the next chunk
            for part in parts:  # every line break that str.splitlines knows is whitespace to strip
                n += 1
                entry = part.strip()
                if entry:
                    yield n, _normal(entry)


def iter_list(path: str) -> Iterator[tuple[int, str]]:
    """:func:`read_list`'s entries one at a time, the file read a MiB at a time (the same
    lines: ``str.splitlines``'s line breaks, after universal newlines).

    Raises:
        UsageError: as :func:`read_list`, with its message (the file is then read whole
            again for it).
    """
    try:
        yield from _stream(path)
    except (OSError, UnicodeDecodeError):
        read_list(path)  # raises the whole-file read's error and message
        raise UsageError(f"--split_lists {path}: cannot read") from None


class _Lookup:
    """The items found by the hash of their base name (or path): per kind, made on first
    need, the sorted int64 hashes and the item numbers in that order (12 bytes per item)."""

    def __init__(self, items: ItemTable) -> None:
        self.items = items
        self._tables: dict[bool, tuple[np.ndarray, np.ndarray]] = {}

    def _key(self, i: int, by_path: bool) -> str:
        rel = self.items.relpaths[i]
        return rel if by_path else posixpath.basename(rel)

    def _table(self, by_path: bool) -> tuple[np.ndarray, np.ndarray]:
        t = self._tables.get(by_path)
        if t is None:
            key = str if by_path else posixpath.basename
            h = np.fromiter((_hash(key(r)) for r in self.items.relpaths), np.int64, len(self.items))
            order = np.argsort(h, kind="stable")  # equal hashes in item order, so in path order
            h = h[order]
            t = self._tables[by_path] = (h, order.astype(np.int32))
        return t

    def resolve(self, entries: list[str]) -> tuple[list[int], tuple[int, str, str] | None]:
        """Each entry's item number (-1: none), up to the first bare name that two items
        share: then also ``(its index, the first two items' paths)``."""
        out, amb = [-1] * len(entries), None
        for by_path in (False, True):
            idx = [k for k, e in enumerate(entries) if ("/" in e) == by_path]
            if not idx:
                continue
            hashes, order = self._table(by_path)
            h = np.fromiter((_hash(entries[k]) for k in idx), np.int64, len(idx))
            lo, hi = np.searchsorted(hashes, h, "left").tolist(), np.searchsorted(hashes, h, "right").tolist()
            for k, a, b in zip(idx, lo, hi):
                found = [i for i in order[a:b].tolist() if self._key(i, by_path) == entries[k]] if a < b else ()
                if len(found) > 1:
                    amb = (k, self.items.relpaths[found[0]], self.items.relpaths[found[1]])
                    break
                if found:
                    out[k] = found[0]
        return (out, None) if amb is None else (out[:amb[0]], amb)


@dataclass
class _Listed:
    """The entries read, in order: item number (-1: not in the index) and line of each,
    where each list's entries begin, and the hashes of the entries not in the index."""

    items: array = field(default_factory=lambda: array("i"))
    lines: array = field(default_factory=lambda: array("i"))
    starts: list[int] = field(default_factory=list)
    unknown: array = field(default_factory=lambda: array("q"))

    def add(self, look: _Lookup, path: str, lines: list[int], entries: list[str]) -> UsageError | None:
        """Append a batch of one list's entries; the error of an ambiguous bare name among them."""
        found, amb = look.resolve(entries)
        self.items.extend(found)
        self.lines.extend(lines[:len(found)])
        self.unknown.extend(_hash(e) for e, i in zip(entries, found) if i < 0)
        if amb is None:
            return None
        k, a, b = amb
        return UsageError(f"--split_lists {path}: line {lines[k]}: {entries[k]} is ambiguous: the index has {a} and {b}")

    def drop_from(self, at: int) -> None:
        """Forget the entries from number ``at`` on."""
        del self.items[at:], self.lines[at:]
        del self.unknown[int(np.count_nonzero(self.item_array() < 0)):]

    def item_array(self) -> np.ndarray:
        return np.frombuffer(self.items, np.int32) if len(self.items) else np.zeros(0, np.int32)

    def where(self, lists: Sequence[tuple[str, str]], p: int) -> tuple[str, int]:
        """``(list file, line)`` of entry ``p``."""
        return lists[bisect.bisect_right(self.starts, p) - 1][1], self.lines[p]


def _read_all(items: ItemTable, lists: Sequence[tuple[str, str]]) -> tuple[_Listed, UsageError | None]:
    """The entries of the lists, in order, up to the first that stops the build as the
    lists are read (an ambiguous bare name, an unreadable list: then none of that list's
    entries); and that error."""
    got, look = _Listed(), _Lookup(items)
    for _, path in lists:
        got.starts.append(len(got.items))
        lines: list[int] = []
        entries: list[str] = []
        stop = None
        try:
            for n, entry in iter_list(path):  # after a stop, the rest is read: an undecodable line wins
                if stop is None:
                    lines.append(n)
                    entries.append(entry)
                    if len(entries) == _BATCH:
                        stop = got.add(look, path, lines, entries)
                        lines, entries = [], []
            if stop is None and entries:
                stop = got.add(look, path, lines, entries)
        except UsageError as e:  # read whole before any line, as read_list does
            got.drop_from(got.starts[-1])
            return got, e
        if stop is not None:
            return got, stop
    return got, None


def _repeated(values: np.ndarray) -> np.ndarray:
    """The values that ``values`` holds more than once."""
    s = np.sort(values)
    same = s[1:] == s[:-1]
    return s[1:][same] if same.any() else s[:0]


def _repeat_candidates(got: _Listed) -> np.ndarray:
    """The entry numbers whose image (or, not in the index, hash) is listed more than once, sorted."""
    items = got.item_array()
    out = []
    again = _repeated(items[items >= 0])
    if len(again):
        out.append(np.flatnonzero(np.isin(items, again)))
    uh = np.frombuffer(got.unknown, np.int64) if len(got.unknown) else np.zeros(0, np.int64)
    again = _repeated(uh)
    if len(again):
        out.append(np.flatnonzero(items < 0)[np.isin(uh, again)])
    return np.unique(np.concatenate(out)) if out else np.zeros(0, np.int64)


def _entries_at(got: _Listed, lists: Sequence[tuple[str, str]], pos: list[int]) -> dict[int, str]:
    """The entries numbered ``pos``, read again from their lists."""
    out: dict[int, str] = {}
    ends = got.starts[1:] + [len(got.items)]
    for (_, path), start, end in zip(lists, got.starts, ends):
        want = {p - start for p in pos if start <= p < end}
        for j, (_, entry) in enumerate(iter_list(path) if want else ()):
            if j in want:
                out[start + j] = entry
                want.discard(j)
                if not want:
                    break
    return out


def _first_repeat(got: _Listed, lists: Sequence[tuple[str, str]]) -> UsageError | None:
    """The error of the first entry that names an image (or, not in the index, a name)
    an earlier entry names."""
    pos = _repeat_candidates(got).tolist()
    if not pos:
        return None
    texts = _entries_at(got, lists, pos)
    first: dict[object, int] = {}
    for p in pos:
        i = got.items[p]
        ident: object = i if i >= 0 else "?" + texts[p]
        if ident in first:
            (path, n), (path0, n0) = got.where(lists, p), got.where(lists, first[ident])
            return UsageError(f"--split_lists {path}: line {n}: {texts[p]} is listed twice (also {path0} line {n0})")
        first[ident] = p
    return None


def _split_codes(got: _Listed, lists: Sequence[tuple[str, str]], n: int) -> tuple[list[str], np.ndarray]:
    """The splits, in order of first use by the items, and each item's code (-1: unlisted)."""
    names: dict[str, int] = {}
    codes = np.full(n, -1, np.int32)
    items, ends = got.item_array(), got.starts[1:] + [len(got.items)]
    for (split, _), a, b in zip(lists, got.starts, ends):
        part = items[a:b]
        codes[part[part >= 0]] = names.setdefault(split, len(names))
    used = [c for c in range(len(names)) if (codes == c).any()]
    used.sort(key=lambda c: int(np.argmax(codes == c)))
    remap = np.full(len(names) + 1, -1, np.int32)  # the last slot maps -1 to -1
    remap[used] = np.arange(len(used), dtype=np.int32)
    by_code = list(names)
    return [by_code[c] for c in used], remap[codes]


def _crossing(items: ItemTable, codes: np.ndarray) -> tuple[int, str | None]:
    """How many groups have listed images in more than one split, and the first of them by name."""
    g = items.group_codes()
    m = (codes >= 0) & (g >= 0)
    g, s = g[m], codes[m]
    lo = np.full(len(items.group_names), np.iinfo(np.int32).max, np.int32)
    hi = np.full(len(items.group_names), -1, np.int32)
    np.minimum.at(lo, g, s)
    np.maximum.at(hi, g, s)
    crossing = np.flatnonzero((hi >= 0) & (hi != lo))
    names = items.group_names
    return len(crossing), min((names[c] for c in iter_ints(crossing)), default=None)


def apply_split_lists(items: ItemTable, lists: Sequence[tuple[str, str]]
                      ) -> tuple[ItemTable, list[Skip], list[str]]:
    """Give each listed image its split, and leave out the unlisted ones.

    Args:
        items: the index's images, sorted by path, each path once; changed in place.
        lists: ``(split, file)`` pairs, in the order given.

    Returns:
        ``(items, the listed ones with their split, in the same order; skips of the
        unlisted; notes)``.

    Raises:
        UsageError: an unreadable list, an image listed twice (one list or two), or an
            ambiguous bare name (the first in the lists' order, as if read line by line).
    """
    got, stop = _read_all(items, lists)
    err = _first_repeat(got, lists) or stop
    if err is not None:
        raise err
    unknown = len(got.unknown)
    names, codes = _split_codes(got, lists, len(items))
    del got
    skips = [Skip(items.relpaths[i], NOT_LISTED) for i in iter_ints(np.flatnonzero(codes < 0))]
    notes = [f"--split_lists: {unknown} listed file(s) are not in the index: ignored"] if unknown else []
    if skips:
        notes.append(f"--split_lists: {len(skips)} image(s) of the index are in no list: skipped "
                     "(see skipped.jsonl)")
    crossing, first = _crossing(items, codes)
    if crossing:
        notes.append(f"--split_lists: {crossing} group(s) are in more than one split as the lists give "
                     f"them (e.g. {first!r}): the same patient in two splits leaks between them")
    items.set_splits(names, codes)
    if skips:
        items.keep_only(np.flatnonzero(codes >= 0))
    return items, skips, notes
