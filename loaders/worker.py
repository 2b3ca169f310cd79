"""The worker side of :func:`loaders.make_loader`: each DataLoader worker plans its share
of an epoch, reads and shuffles its samples and decodes them straight into batches.

:class:`ShardStream` is the ``IterableDataset``; it holds only plain, picklable data
(the split's :class:`~loaders.stream.Spec`, numbers, the shared :class:`~loaders.delivery.Ring`
and skip counter), so workers can be started by any multiprocessing method, and each
worker opens what it reads itself.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .delivery import Batch, Ring, WorkerFailure
from .errors import LoaderError
from .plan import batches_per_rank
from .stream import PAD_LABEL, SampleReader, Spec, shuffled, slot_plan, slot_seed
from .transform import SampleTransform

__all__ = ["ShardStream", "BatchOut"]

log = logging.getLogger("loaders")


class ShardStream(IterableDataset):
    """The IterableDataset behind :func:`make_loader`: each worker yields whole batches.

    Use :func:`make_loader` rather than this class directly; it is public for people
    who build their own ``DataLoader`` (then pass ``batch_size=None`` and the same
    ``num_workers`` as ``workers`` here). Any start method works. ``transform``: a
    picklable callable applied to each decoded sample (see :mod:`loaders.transform`).
    """

    def __init__(self, spec: Spec, batch_size: int, mode: str, seed: int, rank: int, world_size: int,
                 shuffle_buffer: int, with_keys: bool, skipped=None, continuous: bool = False,
                 transform=None):
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
        self.batches = batches_per_rank(sum(s.samples for s in spec.shards), batch_size, world_size, mode)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator:
        """Yield ``((epoch, worker, index), batch)``; with ``continuous``, epoch after epoch."""
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        try:
            while True:
                for j, batch in enumerate(self._batches(worker, workers, info is not None, epoch)):
                    yield (epoch, worker, j), batch
                if not self.continuous:
                    return
                epoch += 1
        except LoaderError as e:
            yield WorkerFailure(str(e))

    def _samples(self, plan, worker: int, epoch: int):
        """``(reader, samples)`` of a worker's ``plan`` for ``epoch`` (shuffled in train mode)."""
        reader = SampleReader(self.spec, self.skipped)
        samples = reader.read(plan)
        if self.mode == "train":
            rng = random.Random(slot_seed(self.seed, epoch, self.rank, worker, 1))
            samples = shuffled(samples, self.shuffle_buffer, rng)
        return reader, samples

    def _batches(self, worker: int, workers: int, in_worker: bool, epoch: int) -> Iterator[Batch]:
        """This worker's batches of ``epoch``: exactly the planned number, padded at the end."""
        spec, B = self.spec, self.batch_size
        plan = slot_plan(spec, B, self.rank, self.world_size, worker, workers, self.mode, self.seed, epoch)
        if plan.batches == 0:
            return
        reader, samples = self._samples(plan, worker, epoch)
        out = BatchOut(self.ring if in_worker else None, worker, B, spec.size, self.with_keys)
        tf = None if self.transform is None else SampleTransform(self.transform, self.seed, in_worker)
        produced = 0
        arr, labels, keys = out.start()
        i = 0
        for s in samples:  # the plan makes these fit exactly in plan.batches batches
            if produced == plan.batches:
                raise LoaderError(f"internal error: more samples than planned in rank {self.rank} worker {worker}")
            try:
                labels[i] = reader.pixels_into(arr[i, 0], s)  # decoded, or copied from the decoded cache
            except LoaderError as e:
                if spec.on_error == "raise":
                    raise
                log.warning("skipped: %s", e)
                reader.count_skip()
                continue
            if tf is not None:  # a bug in the transform, not bad data: raised even with on_error="skip"
                tf(arr[i], s.shard, s.key, epoch)
            keys[i] = s.key
            i += 1
            if i == B:
                yield out.finish()
                produced += 1
                i = 0
                if produced < plan.batches:
                    arr, labels, keys = out.start()
        # Padding (eval's last batch, or samples skipped with on_error="skip").
        while produced < plan.batches:
            arr[i:] = 0
            labels[i:] = PAD_LABEL
            keys[i:] = [""] * (B - i)
            yield out.finish()
            produced += 1
            i = 0
            if produced < plan.batches:
                arr, labels, keys = out.start()


class BatchOut:
    """Where a worker assembles its batches: ring slots (in workers) or fresh tensors.

    Args:
        ring: the shared ring (None with ``num_workers=0``: fresh tensors per batch).
        worker: this worker's index.
        batch_size: samples per batch.
        size: side of the square images in pixels.
        with_keys: send the sample keys along.
    """

    def __init__(self, ring: Ring | None, worker: int, batch_size: int, size: int, with_keys: bool):
        self.ring, self.worker, self.B, self.S, self.with_keys = ring, worker, batch_size, size, with_keys
        self.k = -1
        self._state = ring.state.numpy() if ring is not None else None

    def start(self):
        """A free batch: ``(images uint8 [B,1,S,S] array, labels int64 [B], keys list)``."""
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
        self.labels = np.full(self.B, PAD_LABEL, dtype=np.int64)
        self.keys = [""] * self.B
        return arr, self.labels, self.keys

    def finish(self) -> Batch:
        """The message that hands the batch started last to the main process."""
        keys = self.keys if self.with_keys else None
        if self.ring is None:
            return Batch(-1, self.images, self.labels, keys)
        return Batch(self.k, None, self.labels, keys)
