"""Phase 2a of a build: plan the splits and the shard layout from the converted records.

With every image's pixel digest known, exact duplicates and ``--group`` members are
joined, splits are assigned (:mod:`shardgen.build.split`, :mod:`shardgen.build.mlsplit`), each split is
shuffled with the seed and cut into shards of ``shard_size`` samples. The plan holds
arrays of item numbers, not one object per sample (:mod:`shardgen.sources.columns`): the
:class:`~shardgen.build.assemble.ShardJob` of a shard, with its samples' ``.json`` bytes, is made
only when the shard is handed to a worker (:meth:`Plan.jobs`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence
from urllib.parse import quote

import numpy as np

from ..engines.pool import SizedJobs
from .assemble import make_job
from ..sources.columns import ItemTable, RecordTable
from ..format import path_fields, shard_pixels_xxh64, shard_relpath
from ..sources.items import Skip
from .mlsplit import assign_multilabel_indices, positive_rates
from .split import assign_split_indices, shuffle_order

__all__ = ["ShardSpec", "SplitPlan", "Plan", "make_plan"]


@dataclass(frozen=True)
class ShardSpec:
    """One shard of the layout: its path relative to OUT, its item numbers in shard order
    (int64 array) and its ``pixels_xxh64``."""

    relpath: str
    rows: np.ndarray
    pixels_xxh64: str


@dataclass
class SplitPlan:
    """One split: its shards and samples per class (positives per class, multi-label)."""

    name: str
    shards: list[ShardSpec] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class _Source:
    """What the plan reads its samples from (the build's columns)."""

    items: ItemTable
    keys: Sequence[str]
    records: RecordTable
    classes: list[str]
    work: str
    #: the splits are drawn by the paths keys come from (an ``--index`` build: the CSV's path
    #: cells), not by where the files were found, so that a corpus packaged otherwise splits alike
    by_key_source: bool = False

    def __post_init__(self) -> None:
        self.index = {c: k for k, c in enumerate(self.classes)}
        self.multilabel = len(self.items) > 0 and self.items[0].labels is not None

    def label_indices(self, i: int) -> tuple[int, ...]:
        """A multi-label item's class indices, ascending."""
        return tuple(sorted(self.index[c] for c in self.items[i].labels or ()))


@dataclass
class Plan:
    """The whole layout of a build's output (everything but the shard bytes)."""

    splits: dict[str, SplitPlan]
    skips: list[Skip]
    duplicates: list[dict[str, Any]]
    report: dict[str, Any]
    source: Any = None

    @property
    def n_shards(self) -> int:
        return sum(len(sp.shards) for sp in self.splits.values())

    def shard_relpaths(self) -> list[str]:
        return [s.relpath for sp in self.splits.values() for s in sp.shards]

    def jobs(self) -> SizedJobs:
        """Each shard's :class:`~shardgen.build.assemble.ShardJob`, made as it is taken."""
        specs = [spec for sp in self.splits.values() for spec in sp.shards]
        return SizedJobs(len(specs), lambda: (make_job(s.relpath, s.rows, s.pixels_xxh64, self.source)
                                              for s in specs))

    def dataset_json(self, split: str) -> Iterator[bytes]:
        """The bytes of ``split``'s ``dataset.json`` (StyleGAN2-ADA's labels), piece by piece:
        ``{"labels": [["<key>.png", <label>], ...]}`` in shard order, as ``json.dumps`` writes it."""
        src = self.source
        codes = np.asarray([src.index.get(c, -1) for c in src.items.label_names], dtype=np.int64)
        label_codes = src.items.label_codes()
        yield b'{"labels": ['
        sep = b""
        for spec in self.splits[split].shards:
            parts = []
            for i in spec.rows.tolist():
                if src.multilabel:
                    on = set(src.label_indices(i))
                    label: Any = [1.0 if k in on else 0.0 for k in range(len(src.classes))]
                else:
                    label = int(codes[label_codes[i]])
                parts.append(json.dumps([f"{src.keys[i]}.png", label]))
            if parts:
                yield sep + ", ".join(parts).encode()
                sep = b", "
        yield b"]}\n"


def _paths_fields(paths: list[str]) -> dict[str, list[str]]:
    """``{"paths": [...]}``, plus ``paths_raw`` (percent-encoded bytes) when one is not UTF-8."""
    fields = [path_fields(p, "p") for p in paths]
    out = {"paths": [f["p"] for f in fields]}
    if any("p_raw" in f for f in fields):
        out["paths_raw"] = [f.get("p_raw", quote(f["p"], safe="/")) for f in fields]
    return out


def _same_value_groups(values: np.ndarray, rows: np.ndarray) -> list[list[int]]:
    """The ``rows`` (ascending) that share a value of ``values`` (one per row), in groups of
    two or more, each ascending."""
    if not len(rows):
        return []
    order = np.argsort(values, kind="stable")  # a few arrays of n: no np.unique (which makes many)
    sv = values[order]
    same = sv[1:] == sv[:-1]
    if not same.any():
        return []
    mark = np.zeros(len(sv), dtype=bool)
    mark[1:] |= same
    mark[:-1] |= same
    at = np.flatnonzero(mark)
    sv = sv[at]
    cuts = np.flatnonzero(sv[1:] != sv[:-1]) + 1
    return [g.tolist() for g in np.split(rows[order[at]], cuts)]


def _duplicates(src: _Source, ok: np.ndarray) -> list[list[int]]:
    """Exact-duplicate groups as item numbers, sorted by first path."""
    dups = _same_value_groups(src.records.rows["pixels"][ok], ok)
    dups.sort(key=lambda g: src.items.relpaths[g[0]])
    return dups


def _assign(src: _Source, ok: np.ndarray, together, ratios, seed: int) -> tuple[np.ndarray, list[str]]:
    """``(split index of each usable sample, split names)``: the source's own, or by ratio.
    ``together``: groups of positions in ``ok`` (duplicates); ``--group`` groups come from
    the items' group codes."""
    groups = src.items.group_codes()[ok]
    rel = _Rows(src.items.key_sources() if src.by_key_source else src.items.relpaths, ok)
    if ratios is None:
        codes, values = src.items.split_codes()[ok], src.items.split_names
        names = sorted({values[c] for c in np.unique(codes).tolist()})
        remap = np.asarray([names.index(v) if v in names else -1 for v in values] or [0], dtype=np.int16)
        return remap[codes], names
    names = [s for s, _ in ratios]
    if src.multilabel:
        sets = [tuple(sorted(src.index[c] for c in ls)) for ls in src.items.label_sets]
        codes = src.items.label_set_codes()[ok]
        return assign_multilabel_indices(rel, sets, codes, len(src.classes), together, ratios, seed, groups), names
    codes = np.asarray([src.index.get(c, -1) for c in src.items.label_names], dtype=np.int64)
    labels = codes[src.items.label_codes()[ok]] if len(ok) else np.zeros(0, np.int64)
    return assign_split_indices(rel, labels, together, ratios, seed, groups), names


class _Rows(Sequence[str]):
    """``col[rows[i]]`` as a sequence (no copy)."""

    def __init__(self, col: Sequence[str], rows: np.ndarray) -> None:
        self.col, self.rows = col, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        return self.col[int(self.rows[i])]


def _dup_report(src: _Source, dup_groups, split_at: dict[int, str]) -> tuple[list[dict], int, int]:
    """``duplicates.jsonl`` records, label conflicts and groups spanning splits."""
    out, conflicts, cross = [], 0, 0
    for g in dup_groups:
        labels = sorted({src.items[i].label for i in g})
        splits_g = sorted({split_at[i] for i in g})
        conflicts += len(labels) > 1
        cross += len(splits_g) > 1
        out.append(dict(_paths_fields([src.items.relpaths[i] for i in g]), classes=labels,
                        label_conflict=len(labels) > 1, splits=splits_g))
    return out, conflicts, cross


def _counts(src: _Source, rows: np.ndarray) -> dict[str, int]:
    """Samples per class of ``rows`` (positives per class, multi-label)."""
    counts = {c: 0 for c in src.classes}
    if src.multilabel:
        sets = src.items.label_sets
        per_set = np.bincount(src.items.label_set_codes()[rows], minlength=len(sets))
        for ls, n in zip(sets, per_set.tolist()):
            for c in ls:
                counts[c] += n
        return counts
    per_code = np.bincount(src.items.label_codes()[rows], minlength=len(src.items.label_names))
    for code, name in enumerate(src.items.label_names):
        if name in counts:
            counts[name] += int(per_code[code])
    return counts


def _no_finding(src: _Source, rows: np.ndarray) -> int:
    """How many of ``rows`` have no positive class."""
    empty = [k for k, ls in enumerate(src.items.label_sets) if not ls]
    return int(np.isin(src.items.label_set_codes()[rows], empty).sum())


def _split_plan(name: str, rows: np.ndarray, src: _Source, shard_size: int, seed: int) -> SplitPlan:
    rows = rows[shuffle_order(_Rows(src.keys, rows), seed, name)] if len(rows) else rows
    sp = SplitPlan(name, counts=_counts(src, rows))
    for n, s in enumerate(range(0, len(rows), shard_size)):
        part = rows[s:s + shard_size]
        pix = shard_pixels_xxh64((src.keys[i], src.records.pixels_hex(i)) for i in part.tolist())
        sp.shards.append(ShardSpec(shard_relpath(name, n), part, pix))
    return sp


def make_plan(cfg, items: ItemTable, keys: Sequence[str], records: RecordTable, classes: list[str], ratios,
              work: str) -> Plan:
    """Splits, duplicate report and shuffled shard layout of a build."""
    src = _Source(items, keys, records, classes, work, by_key_source=cfg.index is not None)
    okm = records.rows["ok"]
    ok = np.flatnonzero(okm).astype(np.int64)
    skips = [Skip(items.relpaths[i], records.reasons[i]) for i in np.flatnonzero(~okm).tolist()]
    dup_groups = _duplicates(src, ok)
    together = [np.searchsorted(ok, g).tolist() for g in dup_groups]
    split_of, split_names = _assign(src, ok, together, ratios, cfg.seed)
    in_dups = np.asarray(sorted({i for g in dup_groups for i in g}), dtype=np.int64)
    split_at = {int(i): split_names[int(split_of[p])] for i, p in zip(in_dups, np.searchsorted(ok, in_dups))}
    duplicates, conflicts, cross = _dup_report(src, dup_groups, split_at)
    splits = {sp: _split_plan(sp, ok[split_of == j], src, cfg.shard_size, cfg.seed)
              for j, sp in enumerate(split_names)}
    report = {"images_found": len(items), "images_used": len(ok),
              "true_color": int(np.count_nonzero(records.rows["true_color"][ok])),
              "duplicate_groups": len(dup_groups), "duplicate_images": sum(len(g) for g in dup_groups),
              "label_conflicts": conflicts, "duplicates_across_splits": cross}
    if src.multilabel:
        by_split = {sp: ok[split_of == j] for j, sp in enumerate(split_names)}
        report.update({"positive_rates": {n: positive_rates(sp.counts, len(by_split[n])) for n, sp in splits.items()},
                       "no_finding": {n: _no_finding(src, by_split[n]) for n in splits}})
    return Plan(splits, skips, duplicates, report, src)
