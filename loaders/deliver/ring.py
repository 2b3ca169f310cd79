"""The shared-memory ring that carries batches from the DataLoader workers to the main
process, and the small messages sent through the DataLoader beside it.

The main process allocates a :class:`Ring` of batch slots once per loader; a worker
(:class:`~loaders.deliver.worker.BatchOut`) decodes each batch straight into one of its
slots and sends only a :class:`Batch` (slot number, labels, keys), or a
:class:`WorkerFailure` when it hits bad data; the main process
(:class:`~loaders.deliver.delivery.Delivery`) copies the slot out and frees it.
"""

from __future__ import annotations

import torch

__all__ = ["Ring", "Batch", "WorkerFailure"]


class WorkerFailure:
    """Sent through the DataLoader in place of a batch when a worker hits bad data."""

    def __init__(self, message: str):
        self.message = message


class Ring:
    """Batch slots in shared memory, allocated once by the main process.

    Worker ``w`` writes its batches into ``images[w, k]`` for ``k`` cycling through its
    slots and sends only labels and keys through the DataLoader; the main process copies
    the slot out (into pinned memory when pinning) and frees it. This replaces a fresh
    shared-memory tensor per batch (page faults on both sides, every batch) with one
    copy into reused memory. ``state[w, k]`` is 1 while slot ``k`` of worker ``w`` holds
    a batch the main process has not copied out yet.

    The tensors are ordinary shared-memory tensors (``Tensor.share_memory_``), so the
    ring reaches workers started by any multiprocessing method.

    Args:
        workers: DataLoader workers.
        slots: slots per worker (prefetch factor + 1).
        batch_size: samples per batch.
        size: side of the square images in pixels.
    """

    def __init__(self, workers: int, slots: int, batch_size: int, size: int):
        shape = (workers, slots, batch_size, 1, size, size)
        self.images = torch.empty(shape, dtype=torch.uint8).share_memory_()
        self.state = torch.zeros((workers, slots), dtype=torch.int32).share_memory_()
        self.slots = slots


class Batch:
    """A batch on its way to the main process (``slot >= 0``: the pixels are in the ring)."""

    __slots__ = ("slot", "images", "labels", "keys")

    def __init__(self, slot: int, images, labels, keys):
        self.slot, self.images, self.labels, self.keys = slot, images, labels, keys

    def __reduce__(self):
        return (Batch, (self.slot, self.images, self.labels, self.keys))
