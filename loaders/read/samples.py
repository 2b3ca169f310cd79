"""A slot's samples: read shard by shard in plan order, handed out in the slot's output
order, decoded straight into place.

:class:`SampleReader` reads the members of a plan's segments (a shard's bytes come
checked from :mod:`loaders.read.shards`; a sample in the decoded cache,
:mod:`loaders.read.decoded`, is copied from there instead); :func:`slot_samples` holds
them until their turn in the output order (:func:`loaders.order.shuffle.output_order`);
:func:`decode_into` decodes one PNG into an ``S x S`` array. Everything here runs inside
DataLoader workers (or the main process with ``num_workers=0``), from the picklable
:class:`~loaders.read.spec.Spec`.
"""

from __future__ import annotations

import io
import itertools
import logging
from typing import Iterator

import numpy as np
from PIL import PngImagePlugin

from shardgen.format import ShardEntry, ShardReadError, TarReader
from shardgen.format.png import decode_gray_png
from shardgen.format.validate import member_limit

from ..errors import LoaderError
from ..order.plan import SlotPlan
from ..order.sequence import Segment
from .shards.cache import ShardCache
from .shards.opening import jump, open_shard
from .shards.sources import RemoteSource
from .spec import Spec
from .targets import Targets

__all__ = ["RawSample", "SampleReader", "decode_into", "slot_samples"]

log = logging.getLogger("loaders")

#: Seconds to wait for a sample another process is decoding into the cache (then decode it here).
CLAIM_WAIT_S = 0.2


class RawSample:
    """A sample as read from its shard, before decoding.

    ``index`` and ``pos``: its shard's manifest index and its place in the shard (-1 when
    unknown); ``entry``: the decoded-cache entry holding its pixels, when it was read
    from there (then ``png`` and ``cls`` are None).
    """

    __slots__ = ("shard", "key", "png", "cls", "index", "pos", "entry")

    def __init__(self, shard: str, key: str, png: bytes | None, cls: bytes | None, index: int = -1,
                 pos: int = -1, entry=None):
        self.shard, self.key, self.png, self.cls = shard, key, png, cls
        self.index, self.pos, self.entry = index, pos, entry


class SampleReader:
    """Read the samples of a plan's segments, shard by shard.

    Args:
        spec: the split to read.
        skipped: counter of skipped samples (``multiprocessing.Value`` or None).
    """

    def __init__(self, spec: Spec, skipped=None):
        self.spec = spec
        self.skipped = skipped
        self._cache = (ShardCache(spec.cache_dir, spec.cache_limit)
                       if spec.cache_dir and spec.local_root is None else None)
        self._decoded = spec.decoded_store()
        self._targets = spec.targets

    def pixels_into(self, out: np.ndarray, s: RawSample) -> int:
        """Put the pixels of ``s`` into ``out`` (``S x S`` uint8) and return its label: a copy
        from the decoded cache when it holds the sample, else :func:`decode_into` (and the
        decoded sample is stored in the cache, when this shard is cached).

        A cached sample that fails its checksum or label check (see
        :mod:`loaders.read.decoded.entry`) is never served: it is read again from its shard,
        decoded and stored again (``s.key`` is then the shard's)."""
        e = s.entry
        if e is None and self._decoded is not None and s.index >= 0:
            e = self._decoded.entry(s.index)
            if e is not None and not e.ready(s.pos, s.pos + 1):
                return self._decode_once(e, out, s)
        if e is not None:
            label = e.copy_into(out, s.pos)
            if label is not None:
                return label
            if s.png is None:  # it came from the cache alone: read it from its shard
                self._reread(s)
            return self._decode_once(e, out, s)
        return decode_into(out, s, self.spec.size, self._targets)

    def _reread(self, s: RawSample) -> None:
        """Replace the cached parts of ``s`` by its members read from its shard (through
        :meth:`read`, with the shard's checks), for a cached sample that was refused."""
        got = [x for _, x in self.read(SlotPlan(0, (Segment(s.index, s.pos, s.pos + 1),), 1, 0))]
        if not got or got[0] is None or got[0].png is None:
            if got and got[0] is None:
                self.count_skip(-1)  # read() counted it; the caller counts this error
            raise LoaderError(f"{s.shard}: sample {s.key}: refused by the decoded cache and unreadable from its shard")
        s.key, s.png, s.cls, s.entry = got[0].key, got[0].png, got[0].cls, None

    def _decode_once(self, e, out: np.ndarray, s: RawSample) -> int:
        """Decode ``s`` into ``out`` and the cache entry ``e`` once per node: claimed before it is
        decoded; a process finding it claimed waits up to :data:`CLAIM_WAIT_S` for it (a
        copy refused by its checks is decoded here instead)."""
        state = e.claim(s.pos)
        if state == "ready" or (state == "busy" and e.wait_ready(s.pos, CLAIM_WAIT_S)):
            label = e.copy_into(out, s.pos)
            if label is not None:
                return label
            state = e.claim(s.pos)  # refused: its flag was cleared, so this may be ours now
        try:
            label = decode_into(out, s, self.spec.size, self._targets)
            if state == "ours":
                e.store(s.pos, out, label, s.key)
            return label
        finally:
            if state == "ours":
                e.release(s.pos)

    def count_skip(self, n: int = 1) -> None:
        if self.skipped is not None and n:
            with self.skipped.get_lock():
                self.skipped.value += n

    def _open(self, shard: ShardEntry):
        """A stream of the shard's bytes: checked against the manifest before its first byte
        comes out when ``spec.verify`` (:func:`loaders.read.shards.opening.open_shard`)."""
        return open_shard(self.spec, self._cache, shard)

    def _jump(self, tar: TarReader, src: RemoteSource, index: int, shard: ShardEntry, target: int) -> None:
        """Enter an unchecked remote stream near sample ``target`` (``verify=False`` only;
        :func:`loaders.read.shards.opening.jump`)."""
        jump(self.spec, tar, src, index, shard, target)

    def _fail(self, msg: str, missing: int) -> None:
        if self.spec.on_error == "raise":
            raise LoaderError(msg)
        log.warning("skipped %d sample(s): %s", missing, msg)
        self.count_skip(missing)

    def read(self, plan: SlotPlan, skip: frozenset[int] | set[int] = frozenset()) -> Iterator[tuple[int, RawSample | None]]:
        """Yield ``(item, sample)`` for the plan's items (numbered in read order) not in ``skip``.

        ``sample`` is None for an item that could not be read (only with
        ``on_error="skip"``; the failure is logged and counted here). Items in ``skip``
        are passed over without reading their data; a segment holding only such items
        is not opened.
        """
        item = 0
        for seg in plan.segments:
            first, n = item, seg.count
            item += n
            wanted = [k for k in range(n) if first + k not in skip] if skip else None
            if wanted == []:
                continue
            yield from self._read_segment(seg, first, wanted)

    def _read_segment(self, seg: Segment, first: int, wanted: list[int] | None) -> Iterator[tuple[int, RawSample | None]]:
        """Items ``first + k`` for ``k`` in ``wanted`` (None: all) of one segment."""
        shard = self.spec.shards[seg.shard]
        name = self.spec.shard_name(shard)
        indices = seg.indices()
        todo = list(range(seg.count)) if wanted is None else wanted
        entry = self._decoded.entry(seg.shard) if self._decoded is not None else None
        if entry is not None and (entry.ready(indices[todo[0]], indices[todo[-1]] + 1) if seg.take is None
                                  else entry.ready_at([indices[k] for k in todo])):  # no need to open the shard
            for k in todo:
                yield first + k, RawSample(name, entry.key(indices[k]), None, None, seg.shard, indices[k], entry)
            return
        done = 0
        src = None
        try:
            src = self._open(shard)
            member = self.spec.targets.member  # .cls, or .labels.npy of a multi-label build
            tar = TarReader(src, want=("png", member), limit=min(shard.bytes, member_limit(self.spec.size)))
            begin = indices[todo[0]]
            if begin and isinstance(src, RemoteSource) and src.tee is None:  # verify=False only
                self._jump(tar, src, seg.shard, shard, begin)
            for k in todo:
                target = indices[k]
                if tar.skip_samples(target - tar.index) < target - tar.index:
                    raise LoaderError(f"{name}: holds fewer samples than the manifest's {shard.samples}")
                s = next(tar.samples(), None)
                if s is None:
                    raise LoaderError(f"{name}: holds fewer samples than the manifest's {shard.samples}")
                yield first + k, RawSample(name, s.key, s.parts.get("png"), s.parts.get(member), seg.shard, target)
                done += 1
            tee = getattr(src, "tee", None)
            if tee is not None:  # verify=False: the copy is checked only now, after its samples
                src.finish()
                tee.commit()
        except (LoaderError, ShardReadError) as e:
            msg = str(e) if isinstance(e, LoaderError) else f"{name}: {e}"
            self._fail(msg, len(todo) - done)
            for k in todo[done:]:
                yield first + k, None
        finally:
            if src is not None:
                tee = getattr(src, "tee", None)
                if tee is not None:
                    tee.discard()
                src.close()


def slot_samples(reader: SampleReader, plan: SlotPlan, order: Iterator[int], skip: int = 0) -> Iterator[RawSample | None]:
    """A slot's samples in output ``order`` (item numbers, see :func:`loaders.order.shuffle.output_order`),
    without the first ``skip`` outputs, which are neither read nor decoded.

    Items are read in plan order and held until their turn, so at most about a shuffle
    buffer of samples is held (as with :func:`~loaders.order.shuffle.shuffled` over the samples themselves,
    whose order this equals). None stands for an item that could not be read
    (``on_error="skip"``).
    """
    consumed = set(itertools.islice(order, skip)) if skip else frozenset()
    items = reader.read(plan, consumed)
    pending: dict[int, RawSample | None] = {}
    for t in order:
        while t not in pending:
            got = next(items, None)
            if got is None:
                raise LoaderError(f"internal error: item {t} of a plan of {plan.real} never came")
            pending[got[0]] = got[1]
        yield pending.pop(t)
    if next(items, None) is not None:  # runs the reader to its end: the last shard is closed
        raise LoaderError("internal error: more items than planned")


def decode_into(out: np.ndarray, s: RawSample, size: int, targets: Targets | int):
    """Decode ``s`` into ``out`` (``S x S`` uint8) and return its target.

    ``targets``: the split's :class:`~loaders.read.targets.Targets` (an int is the class count
    of a single-label build). ``s.cls`` holds the target member's bytes (``.cls``, or
    ``.labels.npy`` of a multi-label build). Returns the class index, or the float32
    ``[C]`` multi-hot vector. PNGs as shardgen writes them take a fast numpy path
    (:func:`~shardgen.format.png.decode_gray_png`); any other PNG, and errors, Pillow.

    Raises:
        LoaderError: a member is missing or corrupt, the image is not ``size x size`` 8-bit
            grayscale, or the target is not valid (an int in ``[0, C)``, or a float32 0/1 [C]).
    """
    where = f"{s.shard}: sample {s.key}"
    if s.png is None:
        raise LoaderError(f"{where}: no .png member")
    label = (targets if isinstance(targets, Targets) else Targets(int(targets))).parse(s.cls, where)
    if decode_gray_png(s.png, out):
        return label
    try:  # The header first, checked against the manifest (not Pillow's global bomb limit).
        im = PngImagePlugin.PngImageFile(io.BytesIO(s.png))
        if im.size != (size, size) or im.mode != "L":
            raise LoaderError(f"{where}: image is {im.size[0]}x{im.size[1]} mode {im.mode}, "
                              f"expected {size}x{size} mode L (8-bit grayscale)")
        im.load()
        out[...] = np.asarray(im)
    except LoaderError:
        raise
    except Exception as e:  # PIL raises many types for broken data
        raise LoaderError(f"{where}: corrupt PNG: {type(e).__name__}: {e}") from None
    return label
