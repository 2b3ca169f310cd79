"""``shardgen verify``: prove that a build is intact, or name every way in which it is not.

Every shard is streamed once, front to back, through fsspec (so a local folder, ``s3://``
and ``http(s)://`` are read the same way), hashed (xxh64) and counted as it passes; each
sample is checked on the way (member set, key, class index, ``.json`` class, PNG chunk
checksums, decoded size and mode, xxh64 of the decoded pixels against the ``.json``'s
``pixels``) and, per shard, ``pixels_xxh64`` is recomputed from the samples' pixel digests
(the decoded ones, or without decoding the ``.json`` ones). Builds made before these
digests existed are checked without them.

Work split: reader threads (at most 4) parse the tar streams and hash them; batches of 32
samples go to ``workers`` processes that decode and check them (PIL's PNG decoder holds
the GIL, so threads would not help). At most ``4 * workers`` batches are in flight, so
memory stays at a few MB whatever the shard size; per sample only its key, class index
and a 16-hex-digit pixel hash are kept for the build-wide checks.

Build-wide checks afterwards: keys unique across the build, no pixel-identical image in
two splits, per-class counts as in the manifest, each ``<split>/dataset.json`` listing
exactly that split's samples in shard order, no unlisted ``.tar`` in a split folder,
``classes.json`` equal to the manifest's classes, ``skipped.jsonl`` as long as the
manifest says, each split's wids index listing the manifest's shards and counts
(:mod:`shardgen.readers`; a missing index or ``README.md`` is a note).
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import re
import sys
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable

import xxhash
from PIL import Image

from .errors import ShardgenError, UsageError
from .format import CLASSES, DATASET_JSON, KEY_RE, MANIFEST, SKIPPED, shard_pixels_xxh64
from .reader import HashingReader, ShardReadError, iter_samples, open_shard
from .readers import check_reader_files
from .report import human_bytes
from .storage import Build, filesystem, open_build, split_url

__all__ = ["Problem", "VerifyResult", "verify", "format_result"]

_CLS_RE = re.compile(rb"^[0-9]+\n?$")
_HEX16_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Problem:
    """One failed check: where (a shard or file relative to the build), which key, why."""

    where: str
    reason: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.reason}" if self.key else f"{self.where}: {self.reason}"


@dataclass
class VerifyResult:
    """What :func:`verify` found.

    Attributes:
        root: the build as given.
        problems: every failed check, in manifest order (empty when the build is intact).
        splits: samples read per split.
        shards: shards read to their end.
        shards_listed: shards in the manifest.
        bytes: bytes read.
        decoded: images fully decoded (0 with ``decode=False``).
        pixel_digests: shards whose ``pixels_xxh64`` was recomputed and compared.
        image: ``"256x256 L png"``.
        seconds: wall time.
    """

    root: str
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    classes: int = 0
    shards: int = 0
    shards_listed: int = 0
    bytes: int = 0
    decoded: int = 0
    pixel_digests: int = 0
    decode: bool = True
    image: str = ""
    seconds: float = 0.0
    #: checks that could not be made (e.g. listing folders over http), shown with the result
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def samples(self) -> int:
        return sum(self.splits.values())


@dataclass
class _ShardResult:
    relpath: str
    split: str
    problems: list[Problem] = field(default_factory=list)
    #: (key, class index or -1, content hash or "") per sample, in shard order
    samples: list[tuple[str, int, str]] = field(default_factory=list)
    #: per sample, its pixel digest for pixels_xxh64 ("" when unknown), in shard order
    pixels: list[str] = field(default_factory=list)
    complete: bool = False
    pixel_digest: bool = False
    decoded: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class _Expect:
    classes: tuple[str, ...]
    size: int
    mode: str
    ext: str
    decode: bool


def _check_image(data: bytes, ex: _Expect) -> tuple[str | None, str, bool]:
    """Return (problem or None, content hash, decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                fmt = (im.format or "").lower()
                im.verify()  # every chunk's CRC, IDAT included
            with Image.open(io.BytesIO(data)) as im:
                size, mode = im.size, im.mode
                if ex.decode:
                    im.load()
                    pixels = im.tobytes()
    except Exception as e:  # PIL raises many types for broken data; all mean "does not decode"
        return f"image does not decode: {str(e) or type(e).__name__}", "", False
    expect_fmt = {"jpg": "jpeg"}.get(ex.ext, ex.ext)
    if fmt != expect_fmt:
        return f"image is {fmt or 'unknown'}, manifest says {ex.ext}", "", False
    if size != (ex.size, ex.size) or mode != ex.mode:
        return (f"image is {size[0]}x{size[1]} {mode}, manifest says {ex.size}x{ex.size} {ex.mode}",
                "", False)
    if ex.decode:
        return None, xxhash.xxh64_hexdigest(pixels), True
    return None, "b" + xxhash.xxh64_hexdigest(data), False


def _check_sample(parts: dict[str, bytes], ex: _Expect) -> tuple[list[str], int, str, bool, str]:
    """Check one sample's members.

    Returns:
        (reasons, class index or -1, content hash, decoded, pixel digest): the pixel digest is
        the decoded pixels' xxh64, or without decoding the ``.json``'s ``pixels`` ("" if neither).
    """
    reasons: list[str] = []
    want = (ex.ext, "cls", "json")
    missing = [e for e in want if e not in parts]
    extra = sorted(e for e in parts if e not in want)
    if missing:
        reasons.append("missing member " + ", ".join(f".{e}" for e in missing))
    if extra:
        reasons.append("unexpected member " + ", ".join(f".{e}" for e in extra))
    cls = -1
    recorded = None
    if "cls" in parts:
        raw = parts["cls"]
        if not _CLS_RE.match(raw):
            reasons.append(f".cls is not a decimal class index: {raw[:20]!r}")
        else:
            v = int(raw)
            if v >= len(ex.classes):
                reasons.append(f"label {v} out of range (0..{len(ex.classes) - 1})")
            else:
                cls = v
    if "json" in parts:
        try:
            meta = json.loads(parts["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            reasons.append(f".json does not parse: {e}")
        else:
            name = meta.get("class") if isinstance(meta, dict) else None
            if not isinstance(name, str):
                reasons.append(".json has no 'class' name")
            elif cls >= 0 and name != ex.classes[cls]:
                reasons.append(f"label {cls} is {ex.classes[cls]!r} but .json says class {name!r}")
            elif name not in ex.classes:
                reasons.append(f".json class {name!r} is not in the manifest's classes")
            recorded = meta.get("pixels") if isinstance(meta, dict) else None
            if recorded is not None and not (isinstance(recorded, str) and _HEX16_RE.match(recorded)):
                reasons.append(f".json 'pixels' is not a 16-digit hex xxh64: {str(recorded)[:40]!r}")
                recorded = None
    digest, decoded = "", False
    if ex.ext in parts:
        why, digest, decoded = _check_image(parts[ex.ext], ex)
        if why:
            reasons.append(why)
    if decoded and recorded is not None and digest != recorded:
        reasons.append(f"decoded pixels have xxh64 {digest}, .json says pixels {recorded}")
    return reasons, cls, digest, decoded, digest if decoded else (recorded or "")


def _check_batch(batch: list[dict[str, bytes]], ex: _Expect) -> list[tuple[list[str], int, str, bool, str]]:
    """Worker-process entry point: content checks of a batch of samples."""
    return [_check_sample(parts, ex) for parts in batch]


class _Ticker:
    """Thread-safe progress counter feeding an optional tqdm bar."""

    def __init__(self) -> None:
        self.bar = None
        self.lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self.bar is not None and n:
            with self.lock:
                self.bar.update(n)


class _Checker:
    """Runs :func:`_check_batch` inline (one worker) or in a process pool, with backpressure."""

    def __init__(self, ex: _Expect, workers: int, tick: Callable[[int], None]) -> None:
        self.ex = ex
        self.tick = tick
        self.pool = None
        if workers > 1:
            # On Linux, fork (fast, and works from scripts without a __main__ guard). The
            # pool is started here, from the calling thread, before our reader threads and
            # progress bar exist; the children only ever run _check_batch.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))
            # One short task per worker, all at once: every worker is started now, here.
            for f in [self.pool.submit(time.sleep, 0.01) for _ in range(workers)]:
                f.result()
            self.slots = threading.BoundedSemaphore(4 * workers)

    def submit(self, batch: list[dict[str, bytes]]) -> Future:
        if self.pool is None:
            f: Future = Future()
            f.set_result(_check_batch(batch, self.ex))
            self.tick(len(batch))
            return f
        self.slots.acquire()
        try:
            f = self.pool.submit(_check_batch, batch, self.ex)
        except BaseException:
            self.slots.release()
            raise
        n = len(batch)

        def done(_f: Future) -> None:
            self.slots.release()
            self.tick(n)

        f.add_done_callback(done)
        return f

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def _check_shard(build: Build, split: str, entry: dict[str, Any], checker: _Checker,
                 batch_size: int = 32) -> _ShardResult:
    """Stream one shard: structure, size and xxh64 here; sample contents in ``checker``."""
    rel = str(entry["path"])
    res = _ShardResult(relpath=rel, split=split)
    add = res.problems.append
    if not rel.startswith(split + "/"):
        add(Problem(rel, f"listed under split {split!r} but not in folder {split}/"))
    try:
        f = open_shard(build, rel)
    except ShardReadError as e:
        add(Problem(rel, str(e)))
        return res
    seen: dict[str, int] = {}
    structural: list[list[str]] = []  # per sample, reasons found while parsing
    batches: list[Future] = []
    batch: list[dict[str, bytes]] = []
    member_problems: list[str] = []
    read_error: str | None = None
    try:
        with f:
            stream = HashingReader(f)
            try:
                for s in iter_samples(stream, member_problems):
                    for m in member_problems:
                        add(Problem(rel, m))
                    member_problems.clear()
                    reasons = []
                    if not KEY_RE.match(s.key):
                        reasons.append("key has characters outside [A-Za-z0-9_-]")
                    if s.duplicate_exts:
                        reasons.append("member repeated: " + ", ".join(f".{e}" for e in s.duplicate_exts))
                    if s.key in seen:
                        reasons.append(f"key appears twice in this shard (samples {seen[s.key] + 1} "
                                       f"and {len(res.samples) + 1})")
                    else:
                        seen[s.key] = len(res.samples)
                    structural.append(reasons)
                    res.samples.append((s.key, -1, ""))
                    batch.append(s.parts)
                    if len(batch) >= batch_size:
                        batches.append(checker.submit(batch))
                        batch = []
                for m in member_problems:
                    add(Problem(rel, m))
                stream.drain()
            except ShardReadError as e:
                size = _size(build, rel)
                got = f"; the file has {size:,} bytes" if size is not None else ""
                read_error = (f"{e} (after {len(res.samples)} complete samples{got}, "
                              f"manifest says {_int(entry.get('bytes')):,} bytes)")
    except (OSError, ValueError) as e:  # closing a remote file can fail too
        read_error = f"read error: {e}"
    if batch:
        batches.append(checker.submit(batch))
    # Sample problems first (in shard order), then what is wrong with the shard as a whole.
    checked = [r for fut in batches for r in fut.result()]
    for i, ((key, _, _), first, (reasons, cls, digest, decoded, pixels)) in enumerate(
            zip(res.samples, structural, checked)):
        for r in first + reasons:
            add(Problem(rel, r, key))
        res.samples[i] = (key, cls, digest)
        res.pixels.append(pixels)
        res.decoded += decoded
    if read_error is not None:
        add(Problem(rel, read_error))
        return res
    res.complete = True
    res.bytes = stream.n
    if stream.n != entry["bytes"]:
        add(Problem(rel, f"size is {stream.n:,} bytes, manifest says {_int(entry['bytes']):,}"))
    if stream.hexdigest() != entry["xxh64"]:
        add(Problem(rel, f"xxh64 is {stream.hexdigest()}, manifest says {entry['xxh64']} "
                         "(contents changed)"))
    if len(res.samples) != entry["samples"]:
        add(Problem(rel, f"holds {len(res.samples)} samples, manifest says {entry['samples']}"))
    _check_pixel_digest(res, entry)
    return res


def _check_pixel_digest(res: _ShardResult, entry: dict[str, Any]) -> None:
    """Recompute the shard's ``pixels_xxh64`` (when listed and every sample's digest is known)."""
    want = entry.get("pixels_xxh64")
    if want is None or not all(res.pixels):
        return  # an older build, or undecodable samples (each already reported)
    got = shard_pixels_xxh64(zip((k for k, _, _ in res.samples), res.pixels))
    res.pixel_digest = True
    if got != want:
        res.problems.append(Problem(res.relpath, f"pixels_xxh64 of the samples is {got}, manifest says {want} "
                                                 "(keys, order or pixels changed)"))


def _entry_problem(entry: Any) -> str | None:
    if not isinstance(entry.get("path"), str) or not entry["path"]:
        return "'path' is not a string"
    for k in ("samples", "bytes"):
        v = entry.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            return f"{k!r} is not a count: {v!r}"
    if not isinstance(entry.get("xxh64"), str):
        return f"'xxh64' is not a hex string: {entry.get('xxh64')!r}"
    if "pixels_xxh64" in entry and not isinstance(entry["pixels_xxh64"], str):
        return f"'pixels_xxh64' is not a hex string: {entry['pixels_xxh64']!r}"
    return None


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1


def _size(build: Build, rel: str) -> int | None:
    try:
        return int(build.fs.size(build.join(rel)))
    except Exception:
        return None


def _read_json(build: Build, rel: str) -> tuple[Any, str | None]:
    try:
        with build.open(rel) as f:
            return json.loads(f.read()), None
    except FileNotFoundError:
        return None, "missing"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"does not parse as JSON ({e})"
    except OSError as e:
        return None, f"cannot read ({e})"


def _check_dataset_json(build: Build, split: str, results: list[_ShardResult], ext: str,
                        expected_samples: int) -> list[Problem]:
    rel = f"{split}/{DATASET_JSON}"
    doc, err = _read_json(build, rel)
    if err:
        return [Problem(rel, err)]
    labels = doc.get("labels") if isinstance(doc, dict) else None
    if not isinstance(labels, list) or not all(
            isinstance(x, list) and len(x) == 2 and isinstance(x[0], str)
            and isinstance(x[1], int) and not isinstance(x[1], bool) for x in labels):
        return [Problem(rel, "not of the form {\"labels\": [[\"<key>.png\", class_index], ...]}")]
    problems: list[Problem] = []
    complete = all(r.complete for r in results)
    have = [(name, idx) for name, idx in labels]
    want = [(f"{k}.{ext}", c) for r in results for k, c, _ in r.samples]
    if complete and have == want:
        return []
    listed: dict[str, int] = {}
    for name, idx in have:
        if name in listed:
            problems.append(Problem(rel, f"lists {name} twice"))
        listed[name] = idx
    wanted = dict(want)
    for name, idx in want:
        if name not in listed:
            problems.append(Problem(rel, "sample is in the shards but not in dataset.json", name))
        elif idx >= 0 and listed[name] != idx:
            problems.append(Problem(rel, f"label {listed[name]}, the shard says {idx}", name))
    if complete:
        for name, _ in have:
            if name not in wanted:
                problems.append(Problem(rel, "listed but not in any shard of the split", name))
        if not problems:
            i = next((i for i, (a, b) in enumerate(zip(have, want)) if a[0] != b[0]), None)
            if i is not None:
                problems.append(Problem(rel, f"not in shard order: entry {i + 1} is {have[i][0]}, "
                                             f"the shards have {want[i][0]}"))
    elif len(have) != expected_samples:
        problems.append(Problem(rel, f"lists {len(have)} samples, manifest says {expected_samples}"))
    return problems


def _extra_shards(build: Build, listed: set[str], notes: list[str]) -> list[Problem]:
    """Every ``*.tar`` one level below the build root that the manifest does not list."""
    problems = []
    base = build.path.rstrip("/")
    protocol = build.fs.protocol if isinstance(build.fs.protocol, str) else build.fs.protocol[0]
    if protocol in ("http", "https"):
        notes.append("unlisted shards not looked for: http(s) cannot list folders")
        return []
    try:
        found = build.fs.glob(base + "/*/*.tar")
    except Exception as e:  # any listing failure of any filesystem
        return [Problem(".", f"cannot list the build's folders ({type(e).__name__}: {e})")]
    for p in sorted(found):
        rel = str(p)[len(base) + 1:] if str(p).startswith(base + "/") else str(p)
        if rel not in listed:
            problems.append(Problem(rel, "shard not listed in manifest.json (extra or stray file)"))
    return problems


def _open_or_problem(source: str, storage_options) -> tuple[Build | None, Problem | None]:
    try:
        return open_build(source, storage_options), None
    except UsageError as e:
        root, name = split_url(str(source)[7:] if str(source).startswith("file://") else str(source))
        fs, path = filesystem(root, storage_options)
        try:
            exists = fs.isdir(path)
        except Exception:
            exists = False
        if not exists:
            raise UsageError(f"{root}: no such build folder") from None
        msg = str(e)
        prefix = f"{root}/{name}: "
        return None, Problem(name, msg[len(prefix):] if msg.startswith(prefix) else msg)


def default_workers() -> int:
    """Usable cores of this process."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def verify(source: str, *, decode: bool = True, workers: int | None = None, progress: bool = False,
           storage_options: dict[str, Any] | None = None) -> VerifyResult:
    """Check a whole build; see the module docstring for the list of checks.

    Args:
        source: build folder, its ``manifest.json``, or a URL of either.
        decode: fully decode every image (pixel hashes, size and mode from the pixels).
            With False only the PNG header and chunk checksums are read and images are
            compared across splits by their bytes.
        workers: processes decoding images (default: all usable cores; 1: all in this process).
        progress: show a progress bar (samples) on stderr.

    Raises:
        UsageError: ``source`` is not a folder at all.
    """
    t0 = time.perf_counter()
    build, problem = _open_or_problem(source, storage_options)
    res = VerifyResult(root=str(source), decode=decode)
    if build is None:
        res.problems.append(problem)
        res.seconds = time.perf_counter() - t0
        return res
    m = build.manifest
    classes = tuple(m["classes"])
    image = m["image"]
    ex = _Expect(classes=classes, size=int(image["size"]), mode=str(image.get("mode", "L")),
                 ext=str(image.get("ext", "png")), decode=decode)
    res.classes = len(classes)
    res.image = f"{ex.size}x{ex.size} {ex.mode} {ex.ext}"
    jobs = [(split, sh) for split, s in m["splits"].items() for sh in s["shards"]]
    res.shards_listed = len(jobs)
    total = sum(max(0, _int(sh.get("samples"))) for _, sh in jobs)

    workers = max(1, workers or default_workers())
    # Without decoding, a sample costs less to check (~0.1 ms) than to send to a process.
    checker = _Checker(ex, workers if decode and total > 64 else 1, _tick := _Ticker())

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="img", desc="verify", dynamic_ncols=True, leave=False,
                   file=sys.stderr)
    _tick.bar = bar

    def run(job: tuple[str, dict[str, Any]]) -> _ShardResult:
        split, entry = job
        bad = _entry_problem(entry)
        if bad:
            return _ShardResult(relpath=str(entry.get("path")), split=split,
                                problems=[Problem(MANIFEST, f"shard entry {entry.get('path')!r}: {bad}")])
        try:
            return _check_shard(build, split, entry, checker)
        except (ShardgenError, BrokenProcessPool):
            raise
        except Exception as e:  # a check must never end in a traceback; say what happened
            return _ShardResult(relpath=str(entry["path"]), split=split, problems=[
                Problem(str(entry["path"]), f"could not be checked: {type(e).__name__}: {e}")])

    try:
        # Readers (threads) parse and hash shards; decoding runs in the checker's processes.
        with ThreadPoolExecutor(max_workers=min(workers, 4)) as pool:
            results = list(pool.map(run, jobs))
    except BrokenProcessPool:
        raise ShardgenError("a verify worker process died unexpectedly (out of memory?); "
                            "run again with --workers 1 to check in one process") from None
    finally:
        checker.close()
        if bar is not None:
            bar.close()

    keys: dict[str, str] = {}
    images: dict[str, tuple[str, str, str]] = {}
    for split, s in m["splits"].items():
        mine = [r for r in results if r.split == split]
        counts: Counter[int] = Counter()
        for r in mine:
            res.problems.extend(r.problems)
            res.shards += r.complete
            res.bytes += r.bytes
            res.decoded += r.decoded
            res.pixel_digests += r.pixel_digest
            for key, cls, digest in r.samples:
                other = keys.get(key)
                if other is not None:
                    res.problems.append(Problem(r.relpath, f"key is not unique: also in {other}", key))
                else:
                    keys[key] = r.relpath
                if digest:
                    first = images.setdefault(digest, (split, r.relpath, key))
                    if first[0] != split:
                        res.problems.append(Problem(
                            r.relpath, f"same image as {first[2]} in split {first[0]!r} ({first[1]})"
                            if decode else
                            f"same image bytes as {first[2]} in split {first[0]!r} ({first[1]})", key))
                counts[cls] += 1
        n = sum(len(r.samples) for r in mine)
        res.splits[split] = n
        listed = sum(max(0, _int(sh.get("samples"))) for sh in s["shards"])
        if s.get("samples") is not None and s["samples"] != listed:
            res.problems.append(Problem(MANIFEST, f"split {split!r} says {s['samples']} samples but its "
                                                  f"shards list {listed}"))
        if all(r.complete for r in mine):
            cc = s.get("class_counts")
            want = {str(k): _int(v) for k, v in cc.items()} if isinstance(cc, dict) else {}
            got = {classes[c]: v for c, v in counts.items() if c >= 0}
            if want and {k: v for k, v in want.items() if v} != got:
                diff = ", ".join(f"{c} {got.get(c, 0)} (manifest {want.get(c, 0)})"
                                 for c in classes if got.get(c, 0) != want.get(c, 0))
                res.problems.append(Problem(MANIFEST, f"class counts of split {split!r} differ: {diff}"))
        res.problems.extend(_check_dataset_json(build, split, mine, ex.ext, _int(s.get("samples") or listed)))

    # Build-level files.
    res.problems.extend(_extra_shards(build, {str(sh.get("path")) for _, sh in jobs}, res.notes))
    doc, err = _read_json(build, CLASSES)
    if err:
        res.problems.append(Problem(CLASSES, err))
    elif not isinstance(doc, dict) or doc.get("classes") != list(classes):
        res.problems.append(Problem(CLASSES, f"classes differ from manifest.json's {list(classes)}"))
    res.problems.extend(_check_skipped(build, m.get("skipped")))
    reader_problems, reader_notes = check_reader_files(build)  # README.md, wids indexes
    res.problems.extend(Problem(rel, why) for rel, why in reader_problems)
    res.notes.extend(reader_notes)
    res.seconds = time.perf_counter() - t0
    return res


def _check_skipped(build: Build, skipped: Any) -> list[Problem]:
    if not isinstance(skipped, int) or isinstance(skipped, bool):
        return []
    try:
        with build.open(SKIPPED) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except FileNotFoundError:
        return [Problem(SKIPPED, "missing")] if skipped else []
    except OSError as e:
        return [Problem(SKIPPED, f"cannot read ({e})")]
    if len(lines) != skipped:
        return [Problem(SKIPPED, f"lists {len(lines)} files, manifest says {skipped} were skipped")]
    return []


def format_result(r: VerifyResult) -> str:
    """The report: one ``OK: ...`` line, or every problem followed by ``FAILED: ...``."""
    if r.ok:
        parts = ", ".join(f"{k} {v:,}" for k, v in r.splits.items())
        what = (f"{r.decoded:,} images decoded ({r.image})" if r.decode
                else f"PNG headers and checksums read, not decoded ({r.image})")
        return (f"OK: {r.samples:,} samples ({parts}), {r.classes} classes, {r.shards} shards, "
                f"{human_bytes(r.bytes)}: xxh64, bytes and counts match manifest.json, {what}, "
                + ("pixel digests match, " if r.pixel_digests else "") + "keys unique, "
                f"no image in two splits, dataset.json files match"
                + "".join(f"; note: {n}" for n in r.notes) + f" [{r.seconds:.1f} s]")
    lines = [str(p) for p in r.problems] + [f"note: {n}" for n in r.notes]
    read = (f" ({r.shards} of {r.shards_listed} shards read to the end, {r.samples:,} samples checked)"
            if r.shards_listed else "")
    lines.append(f"FAILED: {len(r.problems)} problem(s) in {r.root}{read} [{r.seconds:.1f} s]")
    return "\n".join(lines)
