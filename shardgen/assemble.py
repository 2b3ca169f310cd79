"""Phase 2 of a build: plan the splits and shards, and write each shard from the scratch chunks.

With every image's pixel digest known, exact duplicates and ``--group`` members are
joined, splits are assigned (:mod:`shardgen.split`), each split is shuffled with the seed
and cut into shards of ``shard_size`` samples. :class:`ShardTask` writes one shard under a
temporary name and renames it; a shard already on disk whose plan fingerprint (keys,
pixels, PNG lengths, labels, metadata) and checksum match its journal entry is kept.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import quote

import xxhash

from .convert import CHUNK, ImageRecord
from .errors import ShardgenError
from .format import (SampleMeta, ShardWriter, atomic_write_json, file_xxh64, multilabel_members, path_fields,
                     sample_members, shard_pixels_xxh64, shard_relpath)
from .mlsplit import assign_multilabel, positive_rates
from .scan import Item, Skip
from .split import assign_splits, shuffle_order

__all__ = ["SampleSource", "ShardJob", "SplitPlan", "Plan", "make_plan", "ShardTask"]


@dataclass(frozen=True)
class SampleSource:
    """Where one sample's members come from: its PNG in a chunk's ``.bin``, its label and ``.json``.

    ``labels`` (multi-label builds) holds the class indices of the multi-hot target of
    ``n_classes`` values, and ``cls_index`` is unused.
    """

    key: str
    chunk_bin: str
    offset: int
    length: int
    cls_index: int
    meta_json: bytes
    labels: tuple[int, ...] | None = None
    n_classes: int = 0

    def members(self, png: bytes) -> dict[str, bytes]:
        """The sample's tar members, in order."""
        if self.labels is None:
            return sample_members(png, self.cls_index, self.meta_json)
        return multilabel_members(png, self.labels, self.n_classes, self.meta_json)


@dataclass(frozen=True)
class ShardJob:
    """One shard to write: its path relative to OUT, plan fingerprint, samples in order and pixel digest."""

    relpath: str
    plan_fp: str
    samples: tuple[SampleSource, ...]
    pixels_xxh64: str


@dataclass
class SplitPlan:
    """One split: its shards, its ``dataset.json`` labels and samples per class."""

    name: str
    shards: list[ShardJob] = field(default_factory=list)
    labels: list[list] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Plan:
    """The whole layout of a build's output (everything but the shard bytes)."""

    splits: dict[str, SplitPlan]
    skips: list[Skip]
    duplicates: list[dict[str, Any]]
    report: dict[str, Any]

    @property
    def jobs(self) -> list[ShardJob]:
        return [j for sp in self.splits.values() for j in sp.shards]


def _paths_fields(paths: list[str]) -> dict[str, list[str]]:
    """``{"paths": [...]}``, plus ``paths_raw`` (percent-encoded bytes) when one is not UTF-8."""
    fields = [path_fields(p, "p") for p in paths]
    out = {"paths": [f["p"] for f in fields]}
    if any("p_raw" in f for f in fields):
        out["paths_raw"] = [f.get("p_raw", quote(f["p"], safe="/")) for f in fields]
    return out


def _groups(items: Sequence[Item], records: Sequence[ImageRecord], ok: list[int]) -> tuple[list, list]:
    """Exact-duplicate groups (sorted by first path) and ``--group`` groups, as item indices."""
    by_pixels: dict[str, list[int]] = defaultdict(list)
    by_group: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_pixels[records[i].pixels].append(i)
        if items[i].group is not None:
            by_group[items[i].group].append(i)
    dups = sorted((g for g in by_pixels.values() if len(g) > 1), key=lambda g: items[g[0]].relpath)
    return dups, [g for g in by_group.values() if len(g) > 1]


def _label_indices(it: Item, cls_index: dict[str, int]) -> tuple[int, ...]:
    """A multi-label item's class indices, ascending."""
    return tuple(sorted(cls_index[c] for c in it.labels or ()))


def _assign(items, ok, together, ratios, seed: int, cls_index: dict[str, int]) -> tuple[list[str], list[str]]:
    """``(split of each usable sample, split names)``: the source's own, or assigned by ratio."""
    if ratios is None:
        split_of = [items[i].split for i in ok]
        return split_of, sorted(set(split_of))
    if ok and items[ok[0]].labels is not None:
        split_of = assign_multilabel([items[i].relpath for i in ok], [_label_indices(items[i], cls_index) for i in ok],
                                     len(cls_index), together, ratios, seed)
        return split_of, [s for s, _ in ratios]
    split_of = assign_splits([items[i].relpath for i in ok], [cls_index[items[i].label] for i in ok],
                             together, ratios, seed)
    return split_of, [s for s, _ in ratios]


def _dup_report(items, dup_groups, split_at) -> tuple[list[dict], int, int]:
    """``duplicates.jsonl`` records, label conflicts and groups spanning splits."""
    out, conflicts, cross = [], 0, 0
    for g in dup_groups:
        labels = sorted({items[i].label for i in g})
        splits_g = sorted({split_at[i] for i in g})
        conflicts += len(labels) > 1
        cross += len(splits_g) > 1
        out.append(dict(_paths_fields([items[i].relpath for i in g]), classes=labels,
                        label_conflict=len(labels) > 1, splits=splits_g))
    return out, conflicts, cross


def _shard_job(rel: str, idx: list[int], items, keys, records, cls_index, work: str) -> ShardJob:
    samples, pix = [], []
    h = xxhash.xxh64()
    for i in idx:
        it, rec = items[i], records[i]
        chunk_bin = os.path.join(work, "chunks", f"c-{i // CHUNK:06d}.bin")
        if it.labels is None:
            ci = cls_index[it.label]
            meta = SampleMeta(it.label, it.relpath, rec.width, rec.height, rec.mode, rec.pixels,
                              rec.dicom).to_bytes()
            samples.append(SampleSource(keys[i], chunk_bin, rec.offset, rec.length, ci, meta))
        else:
            labels = _label_indices(it, cls_index)
            classes = list(cls_index)
            ci = ",".join(map(str, labels)) + f"/{len(cls_index)}"
            meta = SampleMeta(None, it.relpath, rec.width, rec.height, rec.mode, rec.pixels, rec.dicom,
                              labels, tuple(classes[j] for j in labels)).to_bytes()
            samples.append(SampleSource(keys[i], chunk_bin, rec.offset, rec.length, -1, meta, labels,
                                        len(cls_index)))
        h.update(f"{keys[i]}\x00{rec.pixels}\x00{rec.length}\x00{ci}\x00".encode() + meta)
        pix.append((keys[i], rec.pixels))
    return ShardJob(rel, h.hexdigest(), tuple(samples), shard_pixels_xxh64(pix))


def _split_plan(name: str, idx: list[int], ctx: dict, shard_size: int, seed: int) -> SplitPlan:
    items, keys = ctx["items"], ctx["keys"]
    order = shuffle_order([keys[i] for i in idx], seed, name)
    idx = [idx[o] for o in order]
    sp = SplitPlan(name, counts={c: 0 for c in ctx["classes"]})
    for n, s in enumerate(range(0, len(idx), shard_size)):
        part = idx[s:s + shard_size]
        sp.shards.append(_shard_job(shard_relpath(name, n), part, items, keys, ctx["records"],
                                    ctx["cls_index"], ctx["work"]))
        for i in part:
            sp.labels.append([f"{keys[i]}.png", _count(sp.counts, items[i], ctx["cls_index"])])
    return sp


def _count(counts: dict[str, int], it: Item, cls_index: dict[str, int]):
    """Count ``it`` in ``counts`` (positives per class, for multi-label); its ``dataset.json`` label."""
    if it.labels is None:
        counts[it.label] += 1
        return cls_index[it.label]
    for c in it.labels:
        counts[c] += 1
    on = set(it.labels)
    return [1.0 if c in on else 0.0 for c in cls_index]


def _multilabel_report(splits: dict[str, SplitPlan], items, by_split: dict[str, list[int]]) -> dict[str, Any]:
    """Per split: positive rate of each class and the samples without any positive."""
    return {"positive_rates": {n: positive_rates(sp.counts, len(by_split.get(n, []))) for n, sp in splits.items()},
            "no_finding": {n: sum(1 for i in by_split.get(n, []) if not items[i].labels) for n in splits}}


def make_plan(cfg, items: Sequence[Item], keys: Sequence[str], records: Sequence[ImageRecord],
              classes: list[str], ratios, work: str) -> Plan:
    """Splits, duplicate report, shuffled shard layout and the shard jobs of a build."""
    cls_index = {c: i for i, c in enumerate(classes)}
    ok = [i for i, r in enumerate(records) if r.ok]
    skips = [Skip(items[i].relpath, r.reason) for i, r in enumerate(records) if not r.ok]
    dup_groups, groups = _groups(items, records, ok)
    pos = {i: j for j, i in enumerate(ok)}  # usable samples are indexed 0..len(ok)-1 for the split
    together = [[pos[i] for i in g] for g in dup_groups + groups]
    split_of, split_names = _assign(items, ok, together, ratios, cfg.seed, cls_index)
    split_at = {i: split_of[pos[i]] for i in ok}
    duplicates, conflicts, cross = _dup_report(items, dup_groups, split_at)
    by_split: dict[str, list[int]] = defaultdict(list)
    for i in ok:
        by_split[split_at[i]].append(i)
    ctx = {"items": items, "keys": keys, "records": records, "classes": classes, "cls_index": cls_index,
           "work": work}
    splits = {sp: _split_plan(sp, by_split.get(sp, []), ctx, cfg.shard_size, cfg.seed) for sp in split_names}
    report = {"images_found": len(items), "images_used": len(ok),
              "true_color": sum(1 for i in ok if records[i].true_color),
              "duplicate_groups": len(dup_groups), "duplicate_images": sum(len(g) for g in dup_groups),
              "label_conflicts": conflicts, "duplicates_across_splits": cross}
    if items and items[0].labels is not None:
        report.update(_multilabel_report(splits, items, by_split))
    return Plan(splits, skips, duplicates, report)


class ShardTask:
    """Write one shard from converted chunks, or keep it if it is already right (picklable).

    Args:
        out: the build folder.
        work: its scratch folder (journal of written shards in ``work/shards``).
    """

    def __init__(self, out: str, work: str) -> None:
        self.out, self.work = out, work

    def _kept(self, job: ShardJob, final: str, journal: str) -> dict | None:
        try:
            with open(journal) as f:
                rec = json.load(f)
            if rec.get("plan") == job.plan_fp and os.path.exists(final):
                digest, size = file_xxh64(final)
                if digest == rec["xxh64"] and size == rec["bytes"]:
                    return rec
        except (OSError, ValueError, KeyError):
            pass
        return None

    def __call__(self, job: ShardJob) -> tuple[str, dict, bool]:
        """Returns ``(relpath, {"samples", "bytes", "xxh64", ...}, kept)``."""
        final = os.path.join(self.out, job.relpath)
        journal = os.path.join(self.work, "shards", job.relpath.replace("/", "__") + ".json")
        rec = self._kept(job, final, journal)
        if rec is not None:
            return job.relpath, rec, True
        handles: dict[str, Any] = {}
        try:
            with ShardWriter(final) as w:
                for s in job.samples:
                    f = handles.get(s.chunk_bin) or handles.setdefault(s.chunk_bin, open(s.chunk_bin, "rb"))
                    f.seek(s.offset)
                    png = f.read(s.length)
                    if len(png) != s.length:
                        raise ShardgenError(f"scratch file {s.chunk_bin} is shorter than recorded; "
                                            "re-run with --overwrite")
                    w.add(s.key, s.members(png))
        finally:
            for f in handles.values():
                f.close()
        rec = {"plan": job.plan_fp, "path": job.relpath, "samples": w.samples, "bytes": w.bytes, "xxh64": w.xxh64}
        atomic_write_json(journal, rec)
        return job.relpath, rec, False
