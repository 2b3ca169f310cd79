"""One sample's checks, run in the decoding worker processes, and the pool that runs them.

Everything a worker process receives or returns (:class:`Expect`, the batches of member
bytes, :class:`SampleCheck`) is picklable, and :func:`check_batch` is the only function
the workers run.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import re
import sys
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import xxhash
from PIL import Image

from ...format.sample import CLS_EXT, LABELS_EXT, LabelError, pixels_digest, read_target

__all__ = ["Expect", "SampleCheck", "check_sample", "check_batch", "Checker"]

_HEX16_RE = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Expect:
    """What every sample of the build should be, from the manifest.

    Attributes:
        classes: class names, by index.
        size: image side in pixels (images are square).
        mode: PIL mode, e.g. ``"L"``.
        ext: the image member's extension, e.g. ``"png"``.
        decode: fully decode every image (else only headers and chunk checksums are read).
        multilabel: samples carry ``.labels.npy`` multi-hot targets instead of ``.cls``.
    """

    classes: tuple[str, ...]
    size: int
    mode: str
    ext: str
    decode: bool
    multilabel: bool = False


class SampleCheck(NamedTuple):
    """One sample's checked contents (a tuple, so that batches pickle small and fast).

    Attributes:
        reasons: what is wrong with the sample (empty when nothing).
        cls: class index, or -1 when unknown; for a multi-label build the tuple of class
            indices set in ``.labels.npy`` (or -1).
        digest: content hash for the cross-split check: the decoded pixels' xxh64, without
            decoding ``"b"`` + the image bytes' xxh64 ("" when the image is bad).
        decoded: whether the image was fully decoded.
        pixels: pixel digest for ``pixels_xxh64``: the decoded pixels' xxh64, or without
            decoding the ``.json``'s ``pixels`` ("" if neither).
    """

    reasons: list[str]
    cls: Any
    digest: str
    decoded: bool
    pixels: str


def _check_image(data: bytes, ex: Expect) -> tuple[str | None, str, bool]:
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
        return None, pixels_digest(pixels), True
    return None, "b" + xxhash.xxh64_hexdigest(data), False


def _check_members(parts: dict[str, bytes], ex: Expect, reasons: list[str]) -> None:
    want = (ex.ext, LABELS_EXT if ex.multilabel else CLS_EXT, "json")
    missing = [e for e in want if e not in parts]
    extra = sorted(e for e in parts if e not in want)
    if missing:
        reasons.append("missing member " + ", ".join(f".{e}" for e in missing))
    if extra:
        reasons.append("unexpected member " + ", ".join(f".{e}" for e in extra))


def _check_target(raw: bytes, ex: Expect, reasons: list[str]) -> Any:
    """The target member's class index (or a multi-label sample's class indices), or -1 (with a
    reason) when it is not a valid one (:func:`~shardgen.format.sample.read_target`)."""
    try:
        return read_target(raw, len(ex.classes), ex.multilabel)
    except LabelError as e:
        reasons.append(str(e))
        return -1


def _check_json_labels(meta: Any, labels: Any, ex: Expect, reasons: list[str]) -> None:
    """A multi-label ``.json``: ``labels`` and ``label_names`` agree with ``.labels.npy`` and the classes."""
    got = meta.get("labels") if isinstance(meta, dict) else None
    names = meta.get("label_names") if isinstance(meta, dict) else None
    n = len(ex.classes)
    if not isinstance(got, list) or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n
                                            for i in got):
        reasons.append(f".json 'labels' is not a list of class indices in 0..{n - 1}")
    elif labels != -1 and tuple(got) != labels:
        reasons.append(f".{LABELS_EXT} sets {list(labels)} but .json says labels {got}")
    elif names != [ex.classes[i] for i in got]:
        reasons.append(f".json 'label_names' {names} do not name its labels {got}")


def _check_json(raw: bytes, cls: Any, ex: Expect, reasons: list[str]) -> str | None:
    """Check the ``.json`` member against the class; returns its valid ``pixels`` digest or None."""
    try:
        meta: Any = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        reasons.append(f".json does not parse: {e}")
        return None
    name = meta.get("class") if isinstance(meta, dict) else None
    if ex.multilabel:
        _check_json_labels(meta, cls, ex, reasons)
    elif not isinstance(name, str):
        reasons.append(".json has no 'class' name")
    elif cls >= 0 and name != ex.classes[cls]:
        reasons.append(f"label {cls} is {ex.classes[cls]!r} but .json says class {name!r}")
    elif name not in ex.classes:
        reasons.append(f".json class {name!r} is not in the manifest's classes")
    recorded = meta.get("pixels") if isinstance(meta, dict) else None
    if recorded is not None and not (isinstance(recorded, str) and _HEX16_RE.match(recorded)):
        reasons.append(f".json 'pixels' is not a 16-digit hex xxh64: {str(recorded)[:40]!r}")
        return None
    return recorded


def check_sample(parts: dict[str, bytes], ex: Expect) -> SampleCheck:
    """Check one sample's members (``{ext: bytes}``) against what the manifest says."""
    reasons: list[str] = []
    _check_members(parts, ex, reasons)
    target = LABELS_EXT if ex.multilabel else CLS_EXT
    cls = _check_target(parts[target], ex, reasons) if target in parts else -1
    recorded = _check_json(parts["json"], cls, ex, reasons) if "json" in parts else None
    digest, decoded = "", False
    if ex.ext in parts:
        why, digest, decoded = _check_image(parts[ex.ext], ex)
        if why:
            reasons.append(why)
    if decoded and recorded is not None and digest != recorded:
        reasons.append(f"decoded pixels have xxh64 {digest}, .json says pixels {recorded}")
    return SampleCheck(reasons, cls, digest, decoded, digest if decoded else (recorded or ""))


def check_batch(batch: list[dict[str, bytes]], ex: Expect) -> list[SampleCheck]:
    """Worker-process entry point: content checks of a batch of samples."""
    return [check_sample(parts, ex) for parts in batch]


class Checker:
    """Runs :func:`check_batch` inline (one worker) or in a process pool, with backpressure.

    Args:
        ex: what the samples should be.
        workers: processes; 1 checks in the calling thread, without a pool.
        tick: called with the number of samples of each finished batch (progress).
    """

    def __init__(self, ex: Expect, workers: int, tick: Callable[[int], None]) -> None:
        self.ex = ex
        self.tick = tick
        self.pool = None
        if workers > 1:
            # On Linux, fork (fast, and works from scripts without a __main__ guard). The
            # pool is started here, from the calling thread, before our reader threads and
            # progress bar exist; the children only ever run check_batch.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))
            # One short task per worker, all at once: every worker is started now, here.
            for f in [self.pool.submit(time.sleep, 0.01) for _ in range(workers)]:
                f.result()
            self.slots = threading.BoundedSemaphore(4 * workers)

    def submit(self, batch: list[dict[str, bytes]]) -> Future:
        """Check ``batch``; blocks while ``4 * workers`` batches are in flight.

        Returns:
            A future of ``check_batch``'s list of :class:`SampleCheck`.
        """
        if self.pool is None:
            f: Future = Future()
            f.set_result(check_batch(batch, self.ex))
            self.tick(len(batch))
            return f
        self.slots.acquire()
        try:
            f = self.pool.submit(check_batch, batch, self.ex)
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
        """Stop the pool (waits for running batches, cancels queued ones)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
