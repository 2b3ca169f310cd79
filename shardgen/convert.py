"""Phase 1 of a build: convert chunks of source files to PNGs in the scratch folder.

The sorted file list is cut into chunks of :data:`CHUNK` files. A worker process decodes,
converts and encodes each chunk and writes ``OUT/.shardgen-work/chunks/c-NNNNNN.bin``
(the PNGs, back to back) and then ``c-NNNNNN.json`` (one :class:`ImageRecord` per file and
the bin's xxh64), each renamed into place when complete. A chunk whose record file
exists, whose bin still has that checksum and whose source files still hash the same is
reused: this is what makes a killed build resumable.
"""

from __future__ import annotations

import json
import os
from dataclasses import astuple, dataclass

import xxhash

from .format import atomic_write_bytes, file_xxh64
from .image import ImageSkip, process_file

__all__ = ["CHUNK", "ImageRecord", "ChunkTask", "chunk_jobs"]

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


def chunk_jobs(root: str, relpaths: list[str]) -> list[tuple[int, list[tuple[str, str]]]]:
    """``[(chunk id, [(relpath, path), ...]), ...]`` for the sorted ``relpaths`` under ``root``."""
    return [(cid, [(r, os.path.join(root, r)) for r in relpaths[s:s + CHUNK]])
            for cid, s in enumerate(range(0, len(relpaths), CHUNK))]


class ChunkTask:
    """Convert one chunk of files (picklable; runs in a worker process).

    Args:
        work: the build's scratch folder.
        size: output side in pixels.
        fit: ``pad``, ``crop`` or ``stretch``.
        max_pixels: larger inputs are skipped as decompression bombs.
        dicom_window: ``auto`` (default) or ``none``, the VOI step of DICOM sources.
    """

    def __init__(self, work: str, size: int, fit: str, max_pixels: int, dicom_window: str = "auto") -> None:
        self.work, self.size, self.fit, self.max_pixels = work, size, fit, max_pixels
        self.dicom_window = dicom_window

    def paths(self, cid: int) -> tuple[str, str]:
        """The chunk's ``.bin`` and ``.json`` paths."""
        base = os.path.join(self.work, "chunks", f"c-{cid:06d}")
        return base + ".bin", base + ".json"

    def _reusable(self, cid: int, entries: list[tuple[str, str]]) -> list[ImageRecord] | None:
        bin_path, json_path = self.paths(cid)
        try:
            with open(json_path) as f:
                cached = json.load(f)
        except (OSError, ValueError):
            return None
        if not cached or cached.get("relpaths") != [r for r, _ in entries]:
            return None
        if not _bin_ok(bin_path, cached.get("bin_xxh64")):
            return None
        recs = [ImageRecord.from_row(r) for r in cached["records"]]
        if all(_src_hash(p) == rec.src_hash for (_, p), rec in zip(entries, recs)):
            return recs
        return None

    def __call__(self, job: tuple[int, list[tuple[str, str]]]) -> tuple[int, list[ImageRecord], bool]:
        """Returns ``(chunk id, records, reused)``."""
        cid, entries = job
        recs = self._reusable(cid, entries)
        if recs is not None:
            return cid, recs, True
        recs = []
        buf = bytearray()
        for _rel, path in entries:
            try:
                pr, src_hash = process_file(path, self.size, self.fit, self.max_pixels, self.dicom_window)
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
                    "bin_xxh64": xxhash.xxh64_hexdigest(buf)}
        atomic_write_bytes(json_path, json.dumps(rec_json).encode(), fsync=False)
        return cid, recs, False
