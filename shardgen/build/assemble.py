"""Phase 2b of a build: write each planned shard from the scratch chunks.

:func:`make_job` turns one shard of the plan (:mod:`shardgen.build.plan`) into a
:class:`ShardJob`: each sample's PNG location in a chunk's ``.bin``, its label and its
``.json`` bytes. :class:`ShardTask` writes the shard through OUT's store (:mod:`shardgen.build.store`:
under a temporary name and renamed, or one upload); a shard already in OUT whose plan fingerprint (keys, pixels, PNG lengths, labels,
metadata) and checksum match its journal entry is kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import xxhash

from .convert import CHUNK
from ..errors import ShardgenError
from ..engines.pool import Batching
from ..format import WORK_DIR, SampleMeta, dump_json, multilabel_members, sample_members
from ..retry import is_transient
from .store import OutStore

__all__ = ["SampleSource", "ShardJob", "make_job", "ShardTask"]


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


def make_job(relpath: str, rows: np.ndarray, pixels_xxh64: str, src: Any) -> ShardJob:
    """The :class:`ShardJob` of one planned shard: its samples' sources and ``.json`` bytes, and
    the plan fingerprint over them (keys, pixels, PNG lengths, labels, metadata).

    Args:
        relpath: the shard's path relative to OUT.
        rows: its item numbers in shard order.
        pixels_xxh64: its ``pixels_xxh64`` (the manifest's).
        src: the plan's columns (:class:`shardgen.build.plan._Source`: items, keys, records,
            classes, work).
    """
    samples = []
    h = xxhash.xxh64()
    recs = src.records
    n_classes = len(src.classes)
    for i in rows.tolist():
        it, row, key = src.items[i], recs.rows[i], src.keys[i]
        chunk_bin = os.path.join(src.work, "chunks", f"c-{i // CHUNK:06d}.bin")
        pixels, length = recs.pixels_hex(i), int(row["length"])
        fields = (it.relpath, int(row["width"]), int(row["height"]), recs.modes[row["mode"]], pixels,
                  recs.dicom.get(i))
        if it.labels is None:
            ci: Any = src.index[it.label]
            meta = SampleMeta(it.label, *fields).to_bytes()
            samples.append(SampleSource(key, chunk_bin, int(row["offset"]), length, ci, meta))
        else:
            labels = src.label_indices(i)
            ci = ",".join(map(str, labels)) + f"/{n_classes}"
            meta = SampleMeta(None, *fields, labels, tuple(src.classes[j] for j in labels)).to_bytes()
            samples.append(SampleSource(key, chunk_bin, int(row["offset"]), length, -1, meta, labels, n_classes))
        h.update(f"{key}\x00{pixels}\x00{length}\x00{ci}\x00".encode() + meta)
    return ShardJob(relpath, h.hexdigest(), tuple(samples), pixels_xxh64)


class ShardTask:
    """Write one shard from converted chunks, or keep it if it is already right (picklable).

    Args:
        out: OUT (:func:`~shardgen.build.store.out_store`); its scratch folder holds the journal of
            written shards (``.shardgen-work/shards``).
    """

    #: One shard per Dask task, two ahead per worker thread: a shard job holds its samples' ``.json``
    #: bytes, so few are in flight.
    batching = Batching("shards", most_per_task=1, ahead_per_slot=2)

    def __init__(self, out: OutStore) -> None:
        self.out = out

    def _kept(self, job: ShardJob, final: str, journal: str) -> dict | None:
        try:
            rec = json.loads(self.out.read_or_none(journal) or b"null")
            if not isinstance(rec, dict) or rec.get("plan") != job.plan_fp:
                return None
            got = self.out.digest(final)
            return rec if got is not None and got == (rec["xxh64"], rec["bytes"]) else None
        except (ValueError, KeyError):
            return None

    def __call__(self, job: ShardJob) -> tuple[str, dict, bool]:
        """Returns ``(relpath, {"samples", "bytes", "xxh64", ...}, kept)``."""
        final = self.out.join(job.relpath)
        journal = self.out.join(f"{WORK_DIR}/shards/" + job.relpath.replace("/", "__") + ".json")
        rec = self._kept(job, final, journal)
        if rec is not None:
            return job.relpath, rec, True
        with self.out.shard(job.relpath) as w:
            for s, png in zip(job.samples, self.out.pngs(job.samples)):
                if isinstance(png, BaseException) and is_transient(png):
                    raise png
                if isinstance(png, BaseException) or len(png) != s.length:
                    raise ShardgenError(f"scratch file {s.chunk_bin} is shorter than recorded; "
                                        "re-run with --overwrite")
                w.add(s.key, s.members(png))
        rec = {"plan": job.plan_fp, "path": job.relpath, "samples": w.samples, "bytes": w.bytes, "xxh64": w.xxh64}
        self.out.put(journal, dump_json(rec))
        return job.relpath, rec, False
