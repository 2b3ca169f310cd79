"""The worker side of :func:`loaders.make_loader`: each DataLoader worker plans its share
of an epoch, reads and shuffles its samples and decodes them straight into batches.

:class:`ShardStream` is the ``IterableDataset``; it holds only plain, picklable data
(the split's :class:`~loaders.read.spec.Spec`, numbers, the shared :class:`~loaders.deliver.ring.Ring`
and skip counter), so workers can be started by any multiprocessing method, and each
worker opens what it reads itself.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import LoaderError
from ..order.plan import batches_per_rank, shard_sequence
from ..order.resume import EpochRun, Layout, Phase
from ..order.sequence import EpochSequence, balanced_units, class_targets, multiplicities
from ..order.shuffle import output_order
from ..read.samples import SampleReader, slot_samples
from ..read.spec import Spec
from ..read.targets import Targets
from ..transform import SampleTransform
from .ring import Batch, Ring, WorkerFailure

__all__ = ["ShardStream", "BatchOut"]

log = logging.getLogger("loaders")


class ShardStream(IterableDataset):
    """The IterableDataset behind :func:`make_loader`: each worker yields whole batches.

    Use :func:`make_loader` rather than this class directly; it is public for people
    who build their own ``DataLoader`` (then pass ``batch_size=None`` and the same
    ``num_workers`` as ``workers`` here). Any start method works. ``transform``: a
    picklable callable applied to each decoded sample (see :mod:`loaders.transform`).
    ``balance``: checked by :func:`loaders.order.sequence.check_balance`; it needs
    ``spec.labels``. ``resume``: ``(epoch, phases)`` of a loaded state (see
    :mod:`loaders.order.resume`), applied to that epoch only.
    """

    def __init__(self, spec: Spec, batch_size: int, mode: str, seed: int, rank: int, world_size: int,
                 shuffle_buffer: int, with_keys: bool, skipped=None, continuous: bool = False,
                 transform=None, balance=None):
        self.spec = spec
        self.batch_size = batch_size
        self.mode = mode
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.with_keys = with_keys
        self.skipped = skipped
        self.epoch = 0
        self.continuous = bool(continuous) and mode == "train"
        self.ring: Ring | None = None
        self.transform = transform
        self.balance = balance
        self.resume: tuple[int, tuple[Phase, ...]] | None = None
        self.batches = batches_per_rank(sum(s.samples for s in spec.shards), batch_size, world_size, mode)

    def __len__(self) -> int:
        return self.batches

    def layout(self, workers: int) -> Layout:
        return Layout(self.world_size, max(1, workers), self.batch_size, self.shuffle_buffer)

    def sequence(self, epoch: int, first: Layout) -> EpochSequence:
        """The positions of ``epoch`` (see :mod:`loaders.order.sequence`); ``first``: the layout
        of the epoch's first phase. Balanced epochs hold exactly the samples that phase
        yields (``batches * batch_size * world_size``), so no class loses a dropped tail."""
        counts = [s.samples for s in self.spec.shards]
        if self.balance is None:
            return shard_sequence(counts, self.seed, epoch, self.mode == "train")
        labels = self.spec.labels
        size = batches_per_rank(sum(counts), first.batch_size, first.world_size, self.mode)
        targets = class_targets(np.bincount(labels, minlength=len(self.spec.classes)), self.balance,
                                size * first.batch_size * first.world_size)
        m = multiplicities(labels, targets, self.seed, epoch)
        return EpochSequence(balanced_units(counts, m, self.seed, epoch))

    def run(self, epoch: int, workers: int, history: tuple[Phase, ...] | None = None) -> EpochRun:
        """The plan of ``epoch`` on ``workers`` workers after the phases in ``history``
        (default: those of the loaded state when it is for ``epoch``, else none)."""
        if history is None:
            history = self.resume[1] if self.resume is not None and self.resume[0] == epoch else ()
        layout = self.layout(workers)
        seq = self.sequence(epoch, history[0].layout if history else layout)
        return EpochRun(seq, layout, self.mode, self.seed, epoch, history)

    def __iter__(self) -> Iterator:
        """Yield ``((epoch, worker, index), batch)``; with ``continuous``, epoch after epoch."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        try:
            while True:
                yield from self._batches(worker, workers, info is not None, epoch)
                if not self.continuous:
                    return
                epoch += 1
        except LoaderError as e:
            yield WorkerFailure(str(e))

    def _batches(self, worker: int, workers: int, in_worker: bool, epoch: int) -> Iterator:
        """This worker's batches of ``epoch`` not yet yielded, tagged ``(epoch, worker, index)``.

        Output ``t`` of the slot always goes to place ``t % B`` of batch ``t // B``: a
        sample that cannot be read or decoded (``on_error="skip"``) and the eval padding
        leave label -100 and a zero image in its place, so the batches never depend on
        which samples failed and a resumed run lines up with an uninterrupted one.
        """
        spec, B = self.spec, self.batch_size
        run = self.run(epoch, workers)
        plan = run.slot(self.rank, worker)
        first = run.skip_batches(worker)
        if plan.batches <= first:
            return
        reader = SampleReader(spec, self.skipped)
        order = output_order(plan.real, self.shuffle_buffer, run.rng(self.rank, worker))
        samples = slot_samples(reader, plan, order, min(first * B, plan.real))
        targets = spec.targets
        out = BatchOut(self.ring if in_worker else None, worker, B, spec.size, self.with_keys, targets)
        tf = None if self.transform is None else SampleTransform(self.transform, self.seed, in_worker)
        for j in range(first, plan.batches):
            arr, labels, keys = out.start()
            for i in range(B):
                s = next(samples, _END)
                if s is _END or s is None:
                    arr[i] = 0
                    continue
                try:
                    labels[i] = reader.pixels_into(arr[i, 0], s)  # decoded, or copied from the decoded cache
                except LoaderError as e:
                    if spec.on_error == "raise":
                        raise
                    log.warning("skipped: %s", e)
                    reader.count_skip()
                    arr[i] = 0
                    continue
                if tf is not None:  # a bug in the transform, not bad data: raised even with on_error="skip"
                    tf(arr[i], s.shard, s.key, epoch)
                keys[i] = s.key
            yield (epoch, worker, j), out.finish()
        if next(samples, _END) is not _END:
            raise LoaderError(f"internal error: more samples than planned in rank {self.rank} worker {worker}")


_END = object()


class BatchOut:
    """Where a worker assembles its batches: ring slots (in workers) or fresh tensors.

    Args:
        ring: the shared ring (None with ``num_workers=0``: fresh tensors per batch).
        worker: this worker's index.
        batch_size: samples per batch.
        size: side of the square images in pixels.
        with_keys: send the sample keys along.
        targets: the split's targets (default: single-label class indices).
    """

    def __init__(self, ring: Ring | None, worker: int, batch_size: int, size: int, with_keys: bool,
                 targets: Targets | None = None):
        self.ring, self.worker, self.B, self.S, self.with_keys = ring, worker, batch_size, size, with_keys
        self.targets = targets or Targets(0)
        self.k = -1
        self._state = ring.state.numpy() if ring is not None else None

    def start(self):
        """A free batch: ``(images uint8 [B,1,S,S] array, labels, keys list)``; labels are
        ``int64 [B]``, or ``float32 [B, C]`` for a multi-label build, all padding at first."""
        if self.ring is None:
            self.images = torch.empty((self.B, 1, self.S, self.S), dtype=torch.uint8)
            arr = self.images.numpy()
        else:
            self.k = (self.k + 1) % self.ring.slots
            st = self._state
            delay = 0.0001
            while st[self.worker, self.k] != 0:  # the main process still has it
                time.sleep(delay)
                delay = min(delay * 2, 0.005)
            st[self.worker, self.k] = 1
            arr = self.ring.images[self.worker, self.k].numpy()
        self.labels = self.targets.empty(self.B)
        self.keys = [""] * self.B
        return arr, self.labels, self.keys

    def finish(self) -> Batch:
        """The message that hands the batch started last to the main process."""
        keys = self.keys if self.with_keys else None
        if self.ring is None:
            return Batch(-1, self.images, self.labels, keys)
        return Batch(self.k, None, self.labels, keys)
