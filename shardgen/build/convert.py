"""Phase 1 of a build: convert chunks of source files to PNGs in the scratch folder.

The sorted file list is cut into chunks of :data:`CHUNK` files. A worker process decodes,
converts and encodes each chunk and writes ``OUT/.shardgen-work/chunks/c-NNNNNN.bin``
(the PNGs, back to back) and then ``c-NNNNNN.json`` (one :class:`ImageRecord` per file, each
source's stat stamp (:mod:`shardgen.build.stamps`) and the bin's xxh64), each renamed into place
when complete. A chunk whose record file exists, whose bin still has that checksum and
whose source files are all unchanged is reused: this is what makes a killed build
resumable. A source with its recorded stamp is unchanged without being read; any other
is read again and must still have the recorded xxh64 (every source, with ``rehash``).
"""

from __future__ import annotations

import json
import os
from dataclasses import astuple, dataclass
from typing import NamedTuple, Sequence

import numpy as np
import xxhash

from ..engines.pool import Batching, SizedJobs
from ..format import atomic_write_bytes, file_xxh64
from ..imaging.image import ImageOptions, ImageSkip, process_file
from .stamps import stamp_of, unchanged

__all__ = ["CHUNK", "ImageRecord", "ChunkTask", "ChunkResult", "ChunkJobs", "chunk_jobs"]

#: Files per conversion chunk (the unit of parallel work and of resume).
CHUNK = 64


@dataclass(frozen=True)
class ImageRecord:
    """What converting one source file gave.

    Attributes:
        ok: the file converted (else it is skipped for ``reason``).
        reason: why it was skipped (None when ok).
        src_hash: xxh64 of the source file's bytes (None when unreadable).
        offset, length: where its PNG lies in the chunk's ``.bin`` (bytes).
        pixels: xxh64 of the converted pixels (finds exact duplicates; the sample's ``pixels``).
        width, height, mode: the decoded original (after EXIF orientation).
        true_color: the original had colour channels that differ somewhere.
        dicom: a DICOM source's audit attributes (``DicomInfo.to_json()``), else None.
    """

    ok: bool
    reason: str | None
    src_hash: str | None
    offset: int = 0
    length: int = 0
    pixels: str | None = None
    width: int = 0
    height: int = 0
    mode: str | None = None
    true_color: bool = False
    dicom: dict | None = None

    def to_row(self) -> list:
        """Positional form for the scratch ``.json`` (compact; internal to a build)."""
        return list(astuple(self))

    @classmethod
    def from_row(cls, row: list) -> "ImageRecord":
        return cls(*row)


def _src_hash(path: str) -> str | None:
    try:
        return file_xxh64(path)[0]
    except OSError:
        return None


def _bin_ok(path: str, digest: str | None) -> bool:
    try:
        return digest is not None and file_xxh64(path)[0] == digest
    except OSError:
        return False


class ChunkJobs(Sequence[tuple[int, list[tuple[str, str]]]]):
    """The conversion jobs of a build, made as they are asked for: ``jobs[cid]`` is
    ``(cid, [(relpath, path), ...])`` for chunk ``cid`` of the sorted ``relpaths`` under ``root``."""

    def __init__(self, root: str, relpaths: Sequence[str]) -> None:
        self.root, self.relpaths = root, relpaths

    def __len__(self) -> int:
        return -(-len(self.relpaths) // CHUNK)

    def __getitem__(self, cid):  # type: ignore[override]
        if not 0 <= cid < len(self):
            raise IndexError(cid)
        rels = self.relpaths[cid * CHUNK:(cid + 1) * CHUNK]
        return cid, [(r, os.path.join(self.root, r)) for r in rels]


def chunk_jobs(root: str, relpaths: Sequence[str]) -> ChunkJobs:
    """The jobs of ``relpaths`` (sorted) under ``root``, one per :data:`CHUNK` files."""
    return ChunkJobs(root, relpaths)


class ChunkResult(NamedTuple):
    """What :class:`ChunkTask` returns for one chunk."""

    cid: int
    records: list[ImageRecord]
    #: the chunk's scratch files were reused (nothing converted)
    reused: bool
    #: source files read again to check a reusable chunk (their stamp had changed, or ``rehash``)
    rehashed: int = 0


class ChunkTask:
    """Convert one chunk of files (picklable; runs in a worker process).

    Args:
        work: the build's scratch folder.
        image: how each source becomes a sample.
        rehash: on resume, read every source of a finished chunk again and compare its
            xxh64, instead of trusting an unchanged stat stamp (default False).
    """

    #: Four chunks per Dask task, four tasks ahead per worker thread.
    batching = Batching("convert", most_per_task=4, ahead_per_slot=4)

    def __init__(self, work: str, image: ImageOptions, rehash: bool = False) -> None:
        self.work, self.image, self.rehash = work, image, rehash

    def paths(self, cid: int) -> tuple[str, str]:
        """The chunk's ``.bin`` and ``.json`` paths."""
        base = os.path.join(self.work, "chunks", f"c-{cid:06d}")
        return base + ".bin", base + ".json"

    def done_mask(self, n: int) -> np.ndarray:
        """For chunks ``0..n-1``: whether its record file exists (bool array)."""
        return np.fromiter((os.path.exists(self.paths(c)[1]) for c in range(n)), bool, n)

    def pending_first(self, jobs: Sequence) -> SizedJobs:
        """``jobs`` (``jobs[cid]`` is chunk ``cid``'s) with the chunks that have no record file
        (to convert) first, in order; the reuse checks of the others come last and even out
        the workers' ends. Jobs are made as they are taken."""
        done = self.done_mask(len(jobs))
        order = np.concatenate([np.flatnonzero(~done), np.flatnonzero(done)])
        return SizedJobs(len(jobs), lambda: (jobs[int(cid)] for cid in order))

    def _reusable(self, cid: int, entries: list[tuple[str, str]]) -> tuple[list[ImageRecord] | None, int]:
        """``(records, sources re-hashed)``; records None: the chunk must be converted."""
        bin_path, json_path = self.paths(cid)
        try:
            with open(json_path) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            return None, 0
        if not cached or cached.get("relpaths") != [r for r, _ in entries]:
            return None, 0
        if not _bin_ok(bin_path, cached.get("bin_xxh64")):
            return None, 0
        recs = [ImageRecord.from_row(r) for r in cached["records"]]
        stamps = cached.get("stamps") or []
        if len(recs) != len(entries):
            return None, 0
        if len(stamps) != len(recs):  # written by an older shardgen: check every source's bytes
            stamps = [None] * len(recs)
        rehashed = 0
        for (_, path), rec, stamp in zip(entries, recs, stamps):
            if not self.rehash and unchanged(stamp, path):
                continue
            rehashed += 1
            if _src_hash(path) != rec.src_hash:
                return None, rehashed
        return recs, rehashed

    def __call__(self, job: tuple[int, list[tuple[str, str]]]) -> ChunkResult:
        cid, entries = job
        recs, rehashed = self._reusable(cid, entries)
        if recs is not None:
            return ChunkResult(cid, recs, True, rehashed)
        recs, stamps = [], []
        buf = bytearray()
        for _rel, path in entries:
            stamps.append(stamp_of(path))  # before the read: a later write changes the stamp
            try:
                pr, src_hash = process_file(path, self.image)
            except ImageSkip as e:
                recs.append(ImageRecord(False, str(e), _src_hash(path)))
                continue
            recs.append(ImageRecord(True, None, src_hash, len(buf), len(pr.png), pr.pixel_hash, pr.width,
                                    pr.height, pr.mode, pr.true_color, pr.dicom and pr.dicom.to_json()))
            buf += pr.png
        bin_path, json_path = self.paths(cid)
        # Scratch files are not fsync'ed: the record file holds the bin's checksum, checked on reuse.
        atomic_write_bytes(bin_path, bytes(buf), fsync=False)
        # ensure_ascii: relpaths may hold surrogate-escaped bytes of non-UTF-8 file names.
        rec_json = {"relpaths": [r for r, _ in entries], "records": [r.to_row() for r in recs],
                    "stamps": stamps, "bin_xxh64": xxhash.xxh64_hexdigest(buf)}
        atomic_write_bytes(json_path, json.dumps(rec_json).encode(), fsync=False)
        return ChunkResult(cid, recs, False, rehashed)
