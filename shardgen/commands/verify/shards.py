"""Streaming one shard: parse and hash it here, check its samples in the :class:`Checker`.

A reader thread calls :func:`check_shard` per shard: it parses the tar stream (key,
member and structure problems are found here), sends the samples in batches to the
checker's processes, hashes and counts every byte as it passes, and afterwards compares
size, xxh64, sample count and the recomputed ``pixels_xxh64`` with the manifest entry.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

from ...format import KEY_RE, HashingReader, Sample, ShardEntry, ShardReadError, TarReader, shard_pixels_xxh64
from ...format.validate import member_limit
from ...storage import Build
from .result import Problem
from .samples import Checker

__all__ = ["ShardResult", "check_shard"]


@dataclass
class ShardResult:
    """What one shard held, and what is wrong with it.

    Attributes:
        relpath: the shard's path relative to the build, as the manifest lists it.
        split: the split that lists it.
        problems: the shard's problems (its samples' first, in shard order).
        samples: ``(key, class index or -1, content hash or "")`` per sample, in shard order.
        pixels: per sample, its pixel digest for ``pixels_xxh64`` ("" when unknown).
        complete: read to its end.
        pixel_digest: ``pixels_xxh64`` was recomputed and compared.
        decoded: images fully decoded.
        bytes: bytes read (when complete).
    """

    relpath: str
    split: str
    problems: list[Problem] = field(default_factory=list)
    samples: list[tuple[str, int, str]] = field(default_factory=list)
    pixels: list[str] = field(default_factory=list)
    complete: bool = False
    pixel_digest: bool = False
    decoded: int = 0
    bytes: int = 0


@dataclass
class _Scan:
    """One shard as its stream is parsed, before the checker's answers are in."""

    res: ShardResult
    checker: Checker
    batch_size: int
    seen: dict[str, int] = field(default_factory=dict)  # key -> index of its first sample
    structural: list[list[str]] = field(default_factory=list)  # per sample, reasons found parsing
    batches: list[Future] = field(default_factory=list)
    batch: list[dict[str, bytes]] = field(default_factory=list)
    member_problems: list[str] = field(default_factory=list)

    def report_members(self) -> None:
        """Move the tar reader's member-level problems (in stream order) to the shard's."""
        for m in self.member_problems:
            self.res.problems.append(Problem(self.res.relpath, m))
        self.member_problems.clear()

    def add(self, s: Sample) -> None:
        """Key and structure checks of one sample; its members go to the checker in batches."""
        reasons = []
        n = len(self.res.samples)
        if not KEY_RE.match(s.key):
            reasons.append("key has characters outside [A-Za-z0-9_-]")
        if s.duplicate_exts:
            reasons.append("member repeated: " + ", ".join(f".{e}" for e in s.duplicate_exts))
        if s.key in self.seen:
            reasons.append(f"key appears twice in this shard (samples {self.seen[s.key] + 1} and {n + 1})")
        else:
            self.seen[s.key] = n
        self.structural.append(reasons)
        self.res.samples.append((s.key, -1, ""))
        self.batch.append(s.parts)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Send the samples collected so far to the checker."""
        if self.batch:
            self.batches.append(self.checker.submit(self.batch))
            self.batch = []

    def collect(self) -> None:
        """Wait for the checker; each sample's problems, class, digests, in shard order."""
        res = self.res
        checked = [r for fut in self.batches for r in fut.result()]
        for i, ((key, _, _), first, c) in enumerate(zip(res.samples, self.structural, checked)):
            for r in first + c.reasons:
                res.problems.append(Problem(res.relpath, r, key))
            res.samples[i] = (key, c.cls, c.digest)
            res.pixels.append(c.pixels)
            res.decoded += c.decoded


def check_shard(build: Build, split: str, entry: ShardEntry, checker: Checker,
                batch_size: int = 32) -> ShardResult:
    """Stream one shard: structure, size and xxh64 here; sample contents in ``checker``.

    Args:
        build: the build being verified.
        split: the split whose manifest entry lists the shard.
        entry: the shard's manifest entry.
        checker: checks the samples' contents.
        batch_size: samples per batch sent to the checker.
    """
    rel = entry.path
    res = ShardResult(relpath=rel, split=split)
    if not rel.startswith(split + "/"):
        res.problems.append(Problem(rel, f"listed under split {split!r} but not in folder {split}/"))
    try:
        f = build.open_shard(rel)
    except ShardReadError as e:
        res.problems.append(Problem(rel, str(e)))
        return res
    scan = _Scan(res, checker, batch_size)
    stream, read_error = _stream(build, f, entry, scan)
    scan.flush()
    # Sample problems first (in shard order), then what is wrong with the shard as a whole.
    scan.collect()
    if read_error is not None:
        res.problems.append(Problem(rel, read_error))
        return res
    _check_totals(res, entry, stream)
    _check_pixel_digest(res, entry)
    return res


def _stream(build: Build, f, entry: ShardEntry, scan: _Scan) -> tuple[HashingReader | None, str | None]:
    """Read the open shard ``f`` to its end through ``scan``; returns (the stream, read error or None)."""
    stream = None
    try:
        with f:
            stream = HashingReader(f)
            try:
                limit = min(entry.bytes, member_limit(build.manifest.image.size))
                for s in TarReader(stream, limit=limit).samples(scan.member_problems):
                    scan.report_members()
                    scan.add(s)
                scan.report_members()
                stream.drain()
            except ShardReadError as e:
                rel = scan.res.relpath
                size = _size(build, rel)
                got = f"; the file has {size:,} bytes" if size is not None else ""
                return stream, (f"{e} (after {len(scan.res.samples)} complete samples{got}, "
                                f"manifest says {entry.bytes:,} bytes)")
    except (OSError, ValueError) as e:  # closing a remote file can fail too
        return stream, f"read error: {e}"
    return stream, None


def _check_totals(res: ShardResult, entry: ShardEntry, stream: HashingReader) -> None:
    """The shard was read to its end: compare its size, xxh64 and sample count with the manifest."""
    rel = res.relpath
    res.complete = True
    res.bytes = stream.n
    if stream.n != entry.bytes:
        res.problems.append(Problem(rel, f"size is {stream.n:,} bytes, manifest says {entry.bytes:,}"))
    if stream.hexdigest() != entry.xxh64:
        res.problems.append(Problem(rel, f"xxh64 is {stream.hexdigest()}, manifest says {entry.xxh64} "
                                         "(contents changed)"))
    if len(res.samples) != entry.samples:
        res.problems.append(Problem(rel, f"holds {len(res.samples)} samples, manifest says {entry.samples}"))


def _check_pixel_digest(res: ShardResult, entry: ShardEntry) -> None:
    """Recompute the shard's ``pixels_xxh64`` (when listed and every sample's digest is known)."""
    want = entry.pixels_xxh64
    if want is None or not all(res.pixels):
        return  # an older build, or undecodable samples (each already reported)
    got = shard_pixels_xxh64(zip((k for k, _, _ in res.samples), res.pixels))
    res.pixel_digest = True
    if got != want:
        res.problems.append(Problem(res.relpath, f"pixels_xxh64 of the samples is {got}, manifest says {want} "
                                                 "(keys, order or pixels changed)"))


def _size(build: Build, rel: str) -> int | None:
    try:
        return int(build.fs.size(build.join(rel)))
    except Exception:
        return None
