"""Phase 1 of a build: convert chunks of source files to PNGs in the scratch folder.

The sorted file list is cut into chunks of :data:`CHUNK` files. A worker process decodes,
converts and encodes each chunk and writes ``OUT/.shardgen-work/chunks/c-NNNNNN.bin``
(the PNGs, back to back) and then ``c-NNNNNN.json`` (one :class:`ImageRecord` per file, each
source's stat stamp (:mod:`shardgen.sources.stamps`) and the bin's xxh64), each renamed into place
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
from ..format import WORK_DIR
from ..imaging.image import ImageOptions, ImageSkip, process_bytes
from ..sources.files import SourceFiles
from .store import OutStore

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
    """Convert one chunk of files (picklable; runs in a worker process or a Dask worker).

    Args:
        src: where the sources are read (:func:`~shardgen.sources.files.source_files`).
        out: OUT, whose scratch folder holds the chunks (:func:`~shardgen.build.store.out_store`).
        image: how each source becomes a sample.
        rehash: on resume, read every source of a finished chunk again and compare its
            xxh64, instead of trusting an unchanged stat stamp (default False). Sources with no
            stamp (a URL) are always read again.
    """

    #: Four chunks per Dask task, four tasks ahead per worker thread.
    batching = Batching("convert", most_per_task=4, ahead_per_slot=4)

    def __init__(self, src: SourceFiles, out: OutStore, image: ImageOptions, rehash: bool = False) -> None:
        self.src, self.out, self.image, self.rehash = src, out, image, rehash
        #: one bit per chunk, set by :meth:`done_mask`: its records existed when OUT was listed
        self.listed: bytes | None = None

    def paths(self, cid: int) -> tuple[str, str]:
        """The chunk's ``.bin`` and ``.json`` paths."""
        base = self.out.join(f"{WORK_DIR}/chunks/c-{cid:06d}")
        return base + ".bin", base + ".json"

    def done_mask(self, n: int) -> np.ndarray:
        """For chunks ``0..n-1``: whether its record file exists (one listing). The task keeps the
        answer (one bit per chunk), so that a chunk without records is converted without looking
        again."""
        have = self.out.names(f"{WORK_DIR}/chunks")
        done = np.fromiter((f"c-{c:06d}.json" in have for c in range(n)), bool, n)
        self.listed = np.packbits(done).tobytes()
        return done

    def _listed_absent(self, cid: int) -> bool:
        """The chunk had no record file when OUT was listed (:meth:`done_mask`)."""
        listed = self.listed
        return listed is not None and cid < 8 * len(listed) and not (listed[cid >> 3] >> (7 - (cid & 7))) & 1

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
            cached = json.loads(self.out.read_or_none(json_path) or b"null")
        except ValueError:
            return None, 0
        if not isinstance(cached, dict) or cached.get("relpaths") != [r for r, _ in entries]:
            return None, 0
        got = self.out.digest(bin_path)
        if got is None or got[0] != cached.get("bin_xxh64"):
            return None, 0
        recs = [ImageRecord.from_row(r) for r in cached["records"]]
        stamps = cached.get("stamps") or []
        if len(recs) != len(entries):
            return None, 0
        if len(stamps) != len(recs):  # written by an older shardgen: check every source's bytes
            stamps = [None] * len(recs)
        rehashed = 0
        for (_, path), rec, stamp in zip(entries, recs, stamps):
            if not self.rehash and self.src.trusted(stamp, path):
                continue
            rehashed += 1
            if self.src.xxh64(path) != rec.src_hash:
                return None, rehashed
        return recs, rehashed

    def __call__(self, job: tuple[int, list[tuple[str, str]]]) -> ChunkResult:
        cid, entries = job
        recs, rehashed = (None, 0) if self._listed_absent(cid) else self._reusable(cid, entries)
        if recs is not None:
            return ChunkResult(cid, recs, True, rehashed)
        recs, stamps = [], []
        buf = bytearray()
        for path, stamp, data in self.src.read_each([p for _, p in entries]):
            stamps.append(stamp)
            if isinstance(data, OSError):
                recs.append(ImageRecord(False, f"unreadable: {data.strerror or data}", None))
                continue
            src_hash = xxhash.xxh64_hexdigest(data)
            try:
                pr = process_bytes(data, self.image, name=path)
            except ImageSkip as e:
                recs.append(ImageRecord(False, str(e), src_hash))
                continue
            recs.append(ImageRecord(True, None, src_hash, len(buf), len(pr.png), pr.pixel_hash, pr.width,
                                    pr.height, pr.mode, pr.true_color, pr.dicom and pr.dicom.to_json()))
            buf += pr.png
        bin_path, json_path = self.paths(cid)
        # Scratch files are not fsync'ed: the record file holds the bin's checksum, checked on reuse.
        # ensure_ascii: relpaths may hold surrogate-escaped bytes of non-UTF-8 file names.
        rec_json = {"relpaths": [r for r, _ in entries], "records": [r.to_row() for r in recs],
                    "stamps": stamps, "bin_xxh64": xxhash.xxh64_hexdigest(buf)}
        self.out.put_pair((bin_path, bytes(buf)), (json_path, json.dumps(rec_json).encode()))
        return ChunkResult(cid, recs, False, rehashed)
