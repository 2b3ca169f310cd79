"""Compact, columnar storage of a build's per-image records, for the client process.

A build of N images keeps per image its source path, class, split, group, key and what
converting it gave. As Python objects (an :class:`~shardgen.sources.items.Item`, an
:class:`~shardgen.build.convert.ImageRecord`, their strings) that is about 1.8 KB per image: 18 GB
on the client for a 10-million-image corpus. Here the same facts live in arrays:

- :class:`StrColumn`: strings as one UTF-8 byte blob (surrogate-escaped, so undecodable
  file-name bytes survive) and an array of end offsets (about ``len + 8`` bytes each);
- :class:`Interned`: repeated values (class names, splits, group ids, label sets) as int32
  codes into a table of distinct values;
- :class:`ItemTable`: the scan's items as such columns, a ``Sequence[Item]`` that builds
  each :class:`~shardgen.sources.items.Item` when it is read;
- :class:`RecordTable`: the conversion's results as one numpy structured array, with the
  rare extras (skip reasons, DICOM attributes) in dictionaries.

Measured with ``tools/bench_memory.py`` (see ``docs/benchmarks.md``).
"""

from __future__ import annotations

from array import array
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from .items import Item

__all__ = ["StrColumn", "Interned", "ItemTable", "RecordTable", "RECORD_DTYPE", "ties_sorted", "iter_ints"]

_ENC = ("utf-8", "surrogateescape")
#: Rows per batch where a column is walked in Python or compared in slices.
_TAKE_BATCH = 16384


def iter_ints(idx: Sequence[int]) -> Iterator[int]:
    """The values of ``idx`` (an int array or a ``range``) as Python ints, converted a
    batch at a time: no list of one int object per row."""
    for at in range(0, len(idx), _TAKE_BATCH):
        part = idx[at:at + _TAKE_BATCH]
        yield from part.tolist() if isinstance(part, np.ndarray) else part


class StrColumn(Sequence[str]):
    """An append-only column of strings (``col[i]`` decodes one; slices give lists)."""

    __slots__ = ("_blob", "_ends")

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._blob = bytearray()
        self._ends = array("q")
        for v in values:
            self.append(v)

    def append(self, value: str) -> None:
        self._blob += value.encode(*_ENC)
        self._ends.append(len(self._blob))

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self._ends)
        start = self._ends[i - 1] if i else 0
        return self._blob[start:self._ends[i]].decode(*_ENC)

    def __iter__(self) -> Iterator[str]:
        blob, start = self._blob, 0
        for end in self._ends:
            yield blob[start:end].decode(*_ENC)
            start = end

    def sort_order(self, prefix: int = 32) -> np.ndarray:
        """The indices in the order of the strings (stable), as ``sorted`` orders them: by
        the first ``prefix`` UTF-8 bytes in numpy, then equal prefixes by the strings
        themselves. (UTF-8 bytes sort as code points do, except surrogate-escaped bytes:
        then the strings are sorted in Python.)"""
        n = len(self)
        if not self._blob.isascii():
            try:
                self._blob.decode("utf-8")
            except UnicodeDecodeError:
                return np.asarray(sorted(range(n), key=self.__getitem__), dtype=np.int64)
        blob = np.frombuffer(self._blob, np.uint8)
        ends = np.frombuffer(self._ends, np.int64) if n else np.zeros(0, np.int64)
        starts = np.concatenate([[0], ends[:-1]]) if n else ends
        head = np.zeros((n, prefix), np.uint8)
        for k in range(prefix):
            at = starts + k
            has = at < ends
            head[has, k] = blob[at[has]]
        head = head.view(f"S{prefix}").ravel()
        return ties_sorted(np.argsort(head, kind="stable"), [head], self.__getitem__)

    def take(self, idx: Iterable[int]) -> "StrColumn":
        """A new column of the values at ``idx``, in that order (bytes copied, nothing decoded)."""
        out = StrColumn()
        view, ends, blob, out_ends = memoryview(self._blob), self._ends, out._blob, out._ends
        for i in iter_ints(np.asarray(idx, dtype=np.int64)):
            blob += view[ends[i - 1] if i else 0:ends[i]]
            out_ends.append(len(blob))
        return out


def ties_sorted(order: np.ndarray, cols: list[np.ndarray], key: Callable[[int], Any]) -> np.ndarray:
    """``order`` (a sort by ``cols``) with each run of equal ``cols`` values sorted by ``key``."""
    n = len(order)
    if n < 2:
        return order
    same = np.ones(n - 1, dtype=bool)
    for col in cols:
        for at in range(0, n - 1, _TAKE_BATCH):  # sorted values a batch at a time, not a copy of the column
            v = col[order[at:at + _TAKE_BATCH + 1]]
            same[at:at + len(v) - 1] &= v[1:] == v[:-1]
    if not same.any():
        return order
    order = order.copy()
    edges = np.diff(np.concatenate(([0], same.view(np.int8), [0])))
    for i, j in zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()):
        order[i:j + 1] = sorted(order[i:j + 1], key=key)  # the run order[i..j] of equal values
    return order


class Interned:
    """Distinct values and an int32 code per row (-1: None)."""

    __slots__ = ("values", "_codes", "codes")

    def __init__(self) -> None:
        self.values: list = []
        self._codes: dict | None = {}
        self.codes = array("i")

    def append(self, value) -> None:
        self.codes.append(self.code(value))

    def code(self, value) -> int:
        """The code of ``value`` (added when new; None is -1)."""
        if value is None:
            return -1
        if self._codes is None:
            self.values = list(self.values)
            self._codes = {v: k for k, v in enumerate(self.values)}
        c = self._codes.get(value)
        if c is None:
            c = self._codes[value] = len(self.values)
            self.values.append(value)
        return c

    def __getitem__(self, i: int):
        c = self.codes[i]
        return None if c < 0 else self.values[c]

    def compact(self) -> None:
        """Hold string values as one :class:`StrColumn` (about 60 bytes less per value, for
        the many distinct groups of a large index); the next new value makes them a list again."""
        if self.values and not isinstance(self.values, StrColumn) and all(isinstance(v, str) for v in self.values):
            self.values, self._codes = StrColumn(self.values), None

    def take(self, idx: np.ndarray) -> "Interned":
        """The rows at ``idx``: only the values they use, numbered in order of first use
        (as appending those rows one by one would)."""
        codes = self.array()[idx]
        used, first = np.unique(codes[codes >= 0], return_index=True)
        used = used[np.argsort(first)]
        remap = np.full(len(self.values) + 1, -1, dtype=np.int32)  # the last slot maps -1 to -1
        remap[used] = np.arange(len(used), dtype=np.int32)
        out = Interned()
        out.values = [self.values[c] for c in used.tolist()]
        out._codes = None  # made again on the next append: a table taken from is rarely appended to
        out.codes = array("i", remap[codes].astype(np.intc).tobytes())
        return out

    def array(self) -> np.ndarray:
        """The codes as an int32 numpy array (a copy)."""
        return np.frombuffer(self.codes, dtype=np.int32).copy() if len(self.codes) else np.zeros(0, np.int32)


def _cut_of(relpath: str, keypath: str | None) -> tuple[int, int] | None:
    """``(at, length)`` such that ``keypath`` is ``relpath`` without ``relpath[at:at+length]``
    ((-1, 0): no keypath); None when it is not such a cut."""
    if keypath is None:
        return -1, 0
    n = len(relpath) - len(keypath)
    if n < 0:
        return None
    at = 0
    while at < len(keypath) and keypath[at] == relpath[at]:
        at += 1
    return (at, n) if relpath[at + n:] == keypath[at:] else None


class ItemTable(Sequence[Item]):
    """The scan's items in columns (about 50 bytes per image plus its path).

    ``table[i]`` builds the :class:`Item`; the columns (``relpaths``, ``label_codes()``...)
    serve the build's bulk work without building one object per image.
    """

    def __init__(self) -> None:
        self.relpaths = StrColumn()
        self._label = Interned()
        self._split = Interned()
        self._group = Interned()
        self._labels = Interned()  # multi-label sets (tuples)
        self._cut = array("i")  # keypath = relpath without [at, at + length); at -1: no keypath
        self._cut_len = array("i")
        self._odd_keypaths: dict[int, str] = {}  # keypaths that are not such a cut

    @classmethod
    def of(cls, items: Iterable[Item]) -> "ItemTable":
        t = cls()
        for it in items:
            t.append(it)
        return t

    def append(self, it: Item) -> None:
        cut = _cut_of(it.relpath, it.keypath)
        if cut is None:
            self._odd_keypaths[len(self.relpaths)] = it.keypath  # type: ignore[assignment]
            cut = (-1, 0)
        self.relpaths.append(it.relpath)
        self._label.append(it.label)
        self._split.append(it.split)
        self._group.append(it.group)
        self._labels.append(it.labels)
        self._cut.append(cut[0])
        self._cut_len.append(cut[1])

    def __len__(self) -> int:
        return len(self.relpaths)

    def keypath(self, i: int, relpath: str | None = None) -> str | None:
        """Item ``i``'s keypath (None: its relpath); ``relpath`` saves decoding it again."""
        at = self._cut[i]
        if at < 0:
            return self._odd_keypaths.get(i)
        rel = self.relpaths[i] if relpath is None else relpath
        return rel[:at] + rel[at + self._cut_len[i]:]

    def key_source(self, i: int) -> str:
        """The path item ``i``'s sample key is made from (keypath, else relpath)."""
        rel = self.relpaths[i]
        kp = self.keypath(i, rel)
        return rel if kp is None else kp

    def key_sources(self) -> Sequence[str]:
        """Each item's :meth:`key_source`, read as it is asked for (no list)."""
        return _KeySources(self)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        rel = self.relpaths[i]
        return Item(rel, self._label[i], self._split[i], self._group[i], self.keypath(i, rel), self._labels[i])

    def __iter__(self) -> Iterator[Item]:
        for i in range(len(self)):
            yield self[i]

    @property
    def label_names(self) -> list[str]:
        """The distinct labels, in the order their codes number them."""
        return self._label.values

    def label_codes(self) -> np.ndarray:
        return self._label.array()

    @property
    def split_names(self) -> list[str]:
        """The distinct splits of a pre-split source, in the order their codes number them."""
        return self._split.values

    def split_codes(self) -> np.ndarray:
        """int32 split code per item (-1: none)."""
        return self._split.array()

    def group_codes(self) -> np.ndarray:
        """int32 group code per item (-1: no group)."""
        return self._group.array()

    @property
    def group_names(self) -> Sequence[str]:
        """The distinct groups, in the order their codes number them."""
        return self._group.values

    def set_splits(self, names: list[str], codes: np.ndarray) -> None:
        """Give item ``i`` the split ``names[codes[i]]`` (-1: none); ``names`` in order of first use."""
        self._split = Interned()
        self._split.values, self._split._codes = list(names), None
        self._split.codes = array("i", np.asarray(codes, np.intc).tobytes())

    def compact(self) -> None:
        """Hold the distinct groups compactly (see :meth:`Interned.compact`); labels and
        splits are few, and stay the lists that :attr:`label_names` and :attr:`split_names` give."""
        self._group.compact()

    def take(self, idx: Iterable[int]) -> "ItemTable":
        """A new table of the items at ``idx``, in that order (column by column: no Item made)."""
        t = ItemTable()
        t._fill(self, np.asarray(idx, dtype=np.int64))
        return t

    def keep_only(self, idx: Iterable[int]) -> None:
        """Make this table the items at ``idx``, in that order: :meth:`take` in place, one
        column at a time, so that at most one column is held twice."""
        self._fill(self, np.asarray(idx, dtype=np.int64))

    def _fill(self, src: "ItemTable", idx: np.ndarray) -> None:
        self.relpaths = src.relpaths.take(idx)
        self._label, self._split = src._label.take(idx), src._split.take(idx)
        self._group, self._labels = src._group.take(idx), src._labels.take(idx)
        self._cut = array("i", np.frombuffer(src._cut, np.intc)[idx].tobytes()) if len(idx) else array("i")
        self._cut_len = array("i", np.frombuffer(src._cut_len, np.intc)[idx].tobytes()) if len(idx) else array("i")
        odd = src._odd_keypaths
        self._odd_keypaths = {p: odd[o] for p, o in enumerate(idx.tolist()) if o in odd} if odd else {}

    @property
    def label_sets(self) -> list[tuple[str, ...]]:
        """The distinct multi-label sets."""
        return self._labels.values

    def label_set_codes(self) -> np.ndarray:
        """int32 code per item into :attr:`label_sets` (-1: not multi-label)."""
        return self._labels.array()

    def sort_order(self) -> Sequence[int]:
        """The item numbers in relpath order (stable): an int64 array, or a ``range`` when
        they already are in that order."""
        prev = None
        for rel in self.relpaths:
            if prev is not None and rel < prev:
                return self.relpaths.sort_order()
            prev = rel
        return range(len(self))

    def sorted(self) -> "ItemTable":
        """The items sorted by relpath (``self`` when they already are)."""
        order = self.sort_order()
        return self if isinstance(order, range) else self.take(order)


class _KeySources(Sequence[str]):
    def __init__(self, items: ItemTable) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        return self.items.key_source(i)


#: One row per converted image: the facts :class:`~shardgen.build.convert.ImageRecord` holds that
#: the plan needs (xxh64 digests as integers; mode as a code into ``RecordTable.modes``).
RECORD_DTYPE = np.dtype([("ok", "?"), ("offset", "<i8"), ("length", "<i8"), ("pixels", "<u8"),
                         ("width", "<i4"), ("height", "<i4"), ("mode", "<i2"), ("true_color", "?")])


class RecordTable:
    """What converting each image gave, as columns (``n`` rows, filled chunk by chunk).

    Attributes:
        rows: numpy structured array of :data:`RECORD_DTYPE`.
        reasons: row -> why the image was skipped (rows with ``ok`` False).
        dicom: row -> a DICOM source's audit attributes.
        modes: PIL modes, indexed by the ``mode`` column.
    """

    def __init__(self, n: int) -> None:
        self.rows = np.zeros(n, RECORD_DTYPE)
        self.reasons: dict[int, str] = {}
        self.dicom: dict[int, dict] = {}
        self._modes = Interned()

    @property
    def modes(self) -> list[str]:
        return self._modes.values

    def put(self, start: int, records: Sequence[Any]) -> None:
        """Store :class:`~shardgen.build.convert.ImageRecord` s as rows ``start, start + 1, ...``."""
        for i, r in enumerate(records, start):
            if not r.ok:
                self.rows[i] = (False, 0, 0, 0, 0, 0, -1, False)
                self.reasons[i] = r.reason
                continue
            self.rows[i] = (True, r.offset, r.length, int(r.pixels, 16), r.width, r.height,
                            self._modes.code(r.mode), r.true_color)
            if r.dicom is not None:
                self.dicom[i] = r.dicom

    def pixels_hex(self, i: int) -> str:
        """Row ``i``'s pixel digest as :func:`~shardgen.format.pixels_digest` writes it."""
        return f"{int(self.rows['pixels'][i]):016x}"
