"""The build's two tasks when SRC or OUT is a URL: the same work, through fsspec.

:class:`FsChunkTask` reads each source file through its :class:`~shardgen.storage.location.Location`
and writes the chunk's ``.bin`` and ``.json`` together (:func:`~shardgen.storage.io.put_scratch_pair`);
:class:`FsShardTask` gathers a shard's PNGs from the chunks with ranged reads, writes the
shard to a local temporary file with the one :class:`~shardgen.format.ShardWriter`, and
uploads it atomically (:func:`~shardgen.storage.io.put_file_atomic`: one PUT on an object store).
Every whole-object read is one GET (:func:`~shardgen.storage.io.single_get`). The bytes are those
of :class:`~shardgen.build.convert.ChunkTask` and :class:`~shardgen.build.assemble.ShardTask`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import xxhash
from fsspec.utils import merge_offset_ranges

from .assemble import ShardJob, ShardTask
from .convert import ChunkResult, ChunkTask, ImageRecord
from ..errors import ShardgenError
from ..format import ShardWriter, dump_json, stream_xxh64
from ..imaging.image import ImageOptions, ImageSkip, process_bytes
from ..storage.location import Location
from ..storage.get import read_many, read_ranges
from ..storage.io import put_file_atomic, put_scratch, put_scratch_pair, read_object, read_or_none
from ..retry import is_transient

__all__ = ["FsChunkTask", "FsShardTask"]


class FsChunkTask(ChunkTask):
    """Convert one chunk of files (picklable): sources through ``src``, scratch files through ``work``.

    Args:
        src: where the sources are (their paths in the jobs are full URLs or paths).
        work: the build's scratch folder.
        image: how each source becomes a sample.

    A reusable chunk's sources are always read again and compared with their xxh64 (an
    object store has no stat stamp to trust, as ``--rehash`` does locally).
    """

    def __init__(self, src: Location, work: Location, image: ImageOptions) -> None:
        super().__init__(work.url, image)
        self.src, self.work_loc = src, work
        #: one bit per chunk, set by :meth:`done_mask`: its records existed when OUT was listed
        self.listed: bytes | None = None

    def paths(self, cid: int) -> tuple[str, str]:
        base = self.work_loc.join(f"chunks/c-{cid:06d}")
        return base + ".bin", base + ".json"

    def _src_hash(self, fs, path: str) -> str | None:
        try:
            return xxhash.xxh64_hexdigest(read_object(fs, path))
        except OSError:
            return None

    def done_mask(self, n: int) -> np.ndarray:
        """For chunks ``0..n-1``: whether its record object exists (one listing). The task keeps
        the answer (one bit per chunk), so that a chunk without records is converted without
        asking the store again."""
        wfs = self.work_loc.fs()
        try:
            have = {p.rsplit("/", 1)[-1] for p in wfs.ls(self.work_loc.join("chunks"), detail=False)}
        except (FileNotFoundError, OSError):
            have = set()
        done = np.fromiter((f"c-{c:06d}.json" in have for c in range(n)), bool, n)
        self.listed = np.packbits(done).tobytes()
        return done

    def _listed_absent(self, cid: int) -> bool:
        """The chunk had no record object when OUT was listed (:meth:`done_mask`) at the build's start."""
        listed = self.listed
        return listed is not None and cid < 8 * len(listed) and not (listed[cid >> 3] >> (7 - (cid & 7))) & 1

    def _reusable(self, cid: int, entries: list[tuple[str, str]]) -> list[ImageRecord] | None:
        wfs, sfs = self.work_loc.fs(), self.src.fs()
        bin_path, json_path = self.paths(cid)
        try:
            cached = json.loads(read_or_none(wfs, json_path) or b"null")
        except ValueError:
            return None
        if not cached or cached.get("relpaths") != [r for r, _ in entries]:
            return None
        data = read_or_none(wfs, bin_path)
        if data is None or xxhash.xxh64_hexdigest(data) != cached.get("bin_xxh64"):
            return None
        recs = [ImageRecord.from_row(r) for r in cached["records"]]
        if all(self._src_hash(sfs, p) == rec.src_hash for (_, p), rec in zip(entries, recs)):
            return recs
        return None

    def __call__(self, job: tuple[int, list[tuple[str, str]]]) -> ChunkResult:
        cid, entries = job
        recs = None if self._listed_absent(cid) else self._reusable(cid, entries)
        if recs is not None:
            return ChunkResult(cid, recs, True, len(recs))
        recs, buf = [], bytearray()
        for path, data in _prefetched(self.src.fs(), [p for _, p in entries]):
            if isinstance(data, BaseException):
                if is_transient(data):  # the store's trouble, not the file's: fail, resumable
                    raise data
                # a missing object reads as a missing local file does (the same skip reason)
                why = os.strerror(errno.ENOENT) if isinstance(data, FileNotFoundError) else (
                    getattr(data, "strerror", None) or data)
                recs.append(ImageRecord(False, f"unreadable: {why}", None))
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
        rec_json = {"relpaths": [r for r, _ in entries], "records": [r.to_row() for r in recs],
                    "bin_xxh64": xxhash.xxh64_hexdigest(buf)}
        put_scratch_pair(self.work_loc.fs(), (bin_path, bytes(buf)), (json_path, json.dumps(rec_json).encode()))
        return ChunkResult(cid, recs, False)


#: Sources fetched per request batch; the next batch is fetched while this one is converted.
_BATCH = 16
#: The first batch of a chunk is smaller, so that its conversion starts sooner.
_FIRST = 4


def _prefetched(fs, paths: list[str]) -> Iterator[tuple[str, bytes | BaseException]]:
    """``(path, bytes or the error)`` in order; batches of :data:`_BATCH` concurrent reads (the
    first :data:`_FIRST`), one batch ahead, each read one GET (:func:`~shardgen.storage.get.read_many`)."""

    def fetch(batch: list[str]) -> dict[str, bytes | BaseException]:
        got = read_many(fs, batch) if len(batch) > 1 else _one(fs, batch[0])
        return {fs._strip_protocol(k): v for k, v in got.items()}

    batches = [paths[:_FIRST]] + [paths[i:i + _BATCH] for i in range(_FIRST, len(paths), _BATCH)]
    batches = [b for b in batches if b]
    with ThreadPoolExecutor(1) as ex:
        ahead = ex.submit(fetch, batches[0]) if batches else None
        for i, batch in enumerate(batches):
            got = ahead.result()
            ahead = ex.submit(fetch, batches[i + 1]) if i + 1 < len(batches) else None
            for p in batch:
                yield p, got.get(fs._strip_protocol(p), FileNotFoundError(p))


def _one(fs, path: str) -> dict[str, bytes | BaseException]:
    try:
        return {path: read_object(fs, path)}
    except OSError as e:
        return {path: e}


#: Ranges of one chunk closer than this are read with one request (bytes).
_MAX_GAP = 256 << 10


def _read_pngs(fs, job: ShardJob) -> list[bytes | BaseException]:
    """Each sample's PNG, in order: ranged reads of the chunks, neighbouring ranges merged."""
    paths = [s.chunk_bin for s in job.samples]
    starts = [s.offset for s in job.samples]
    ends = [s.offset + s.length for s in job.samples]
    mpaths, mstarts, mends = merge_offset_ranges(paths, starts, ends, max_gap=_MAX_GAP, max_block=32 << 20)
    blocks = read_ranges(fs, mpaths, mstarts, mends)
    by_path: dict[str, list[tuple[int, int, bytes | BaseException]]] = {}
    for p, a, b, data in zip(mpaths, mstarts, mends, blocks):
        by_path.setdefault(p, []).append((a, b, data))
    out: list[bytes | BaseException] = []
    for p, a, b in zip(paths, starts, ends):
        blk = next(((s0, data) for s0, e0, data in by_path[p] if s0 <= a and b <= e0), None)
        if blk is None or isinstance(blk[1], BaseException):
            out.append(blk[1] if blk else KeyError(p))
        else:
            out.append(blk[1][a - blk[0]:b - blk[0]])
    return out


class FsShardTask(ShardTask):
    """Write one shard to OUT through fsspec, or keep it if it is already right (picklable).

    Args:
        out: the build folder.
        work: its scratch folder.
    """

    def __init__(self, out: Location, work: Location) -> None:
        super().__init__(out.url, work.url)
        self.out_loc, self.work_loc = out, work

    def _kept_remote(self, fs, job: ShardJob, final: str, journal: str) -> dict | None:
        try:
            rec = json.loads(read_or_none(fs, journal) or b"null")
            if not rec or rec.get("plan") != job.plan_fp or fs.size(final) != rec["bytes"]:
                return None
            with fs.open(final, "rb", block_size=8 << 20) as f:
                digest, size = stream_xxh64(f)
            return rec if digest == rec["xxh64"] and size == rec["bytes"] else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def __call__(self, job: ShardJob) -> tuple[str, dict, bool]:
        fs = self.out_loc.fs()
        final = self.out_loc.join(job.relpath)
        journal = self.work_loc.join("shards/" + job.relpath.replace("/", "__") + ".json")
        rec = self._kept_remote(fs, job, final, journal)
        if rec is not None:
            return job.relpath, rec, True
        pngs = _read_pngs(fs, job)
        tmpdir = tempfile.mkdtemp(prefix="shardgen-shard-")
        try:
            local = os.path.join(tmpdir, job.relpath.rsplit("/", 1)[-1])
            with ShardWriter(local) as w:
                for s, png in zip(job.samples, pngs):
                    if isinstance(png, BaseException) and is_transient(png):
                        raise png
                    if isinstance(png, BaseException) or len(png) != s.length:
                        raise ShardgenError(f"scratch object {s.chunk_bin} is shorter than recorded; "
                                            "re-run with --overwrite")
                    w.add(s.key, s.members(png))
            put_file_atomic(fs, local, final)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        rec = {"plan": job.plan_fp, "path": job.relpath, "samples": w.samples, "bytes": w.bytes, "xxh64": w.xxh64}
        put_scratch(fs, journal, dump_json(rec))
        return job.relpath, rec, False
