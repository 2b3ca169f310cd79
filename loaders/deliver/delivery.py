"""Delivery of batches from the DataLoader workers to the main process.

The main process allocates a :class:`~loaders.deliver.ring.Ring` of batch slots in shared
memory once per loader. A worker decodes each batch straight into one of its slots and sends
only a small :class:`~loaders.deliver.ring.Batch` message (slot number, labels, keys) through the DataLoader; in
the main process a :class:`Receiver` thread copies the slot out (into pinned memory
when pinning), frees it, restores the canonical batch order (:class:`Delivery`) and
queues the batches for the training loop.
"""

from __future__ import annotations

import queue
import threading
import traceback
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from ..errors import LoaderError
from ..order.plan import batch_order, extra_shift
from .ring import Batch, WorkerFailure

if TYPE_CHECKING:
    from ..order.resume import EpochRun
    from .worker import ShardStream

__all__ = ["Delivery", "Receiver"]


class Delivery:
    """The main-process side of a loader's batches (no reference to the ShardLoader, so a
    loader nobody holds any more is collected and its workers stopped)."""

    def __init__(self, dataset: "ShardStream", num_workers: int, pin_memory: bool):
        self.dataset, self.num_workers, self.pin_memory = dataset, num_workers, pin_memory
        self._fence = threading.Lock()

    def receive(self, worker: int, b: Batch) -> tuple:
        """Turn a worker's message into the user's batch (copying the ring slot out)."""
        pin = self.pin_memory
        if b.slot < 0:
            images = b.images.pin_memory() if pin else b.images
        else:
            ring = self.dataset.ring
            src = ring.images[worker, b.slot]
            images = torch.empty(src.shape, dtype=torch.uint8, pin_memory=pin)
            # numpy copies in this thread; Tensor.copy_ would wake torch's intra-op thread
            # pool, whose spinning threads take CPU from the decoding workers.
            np.copyto(images.numpy(), src.numpy())
            with self._fence:  # a full barrier: the copy is done before the slot is freed
                ring.state[worker, b.slot] = 0
        labels = torch.from_numpy(b.labels)
        if pin:
            labels = labels.pin_memory()
        return (images, labels) if b.keys is None else (images, labels, b.keys)

    def ordered(self, it, run: "EpochRun", continuous: bool) -> Iterator[tuple[int, tuple]]:
        """``(epoch, batch)`` in each epoch's canonical order (see :func:`batch_order`),
        from ``run`` (the first epoch's plan, maybe resumed) on, epoch after epoch when
        ``continuous``; else that one epoch, then the workers run out."""
        ds = self.dataset
        workers = max(1, self.num_workers)
        L = len(ds)
        epoch = run.epoch
        order = run.order[run.start:]
        stash: dict = {}
        while True:
            for w, j in order:
                want = (epoch, w, j)
                while want not in stash:
                    try:
                        item = next(it)
                    except StopIteration:
                        raise LoaderError(f"internal error: rank {ds.rank} worker {w} ended before its batch {j} "
                                          f"of epoch {epoch}") from None
                    if isinstance(item, WorkerFailure):
                        raise LoaderError(item.message)
                    tag, batch = item
                    stash[tuple(tag)] = self.receive(tag[1], batch)
                yield epoch, stash.pop(want)
            order = batch_order(L, workers, extra_shift(L, workers, ds.mode, epoch + 1))
            if not continuous:
                # Let the workers run to their end: a shard read to its last sample
                # still has to be closed (and a streamed copy verified and cached).
                for item in it:
                    if isinstance(item, WorkerFailure):
                        raise LoaderError(item.message)
                    raise LoaderError(f"internal error: rank {ds.rank} got more batches than planned")
                return
            epoch += 1


def _drop_frames(e: BaseException) -> None:
    """Clear the local variables of the finished frames in ``e``'s tracebacks (and those
    of the exceptions it chains), so that an error the caller holds on to does not keep
    the DataLoader iterator, and with it the worker processes, alive."""
    todo, seen = [e], set()
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        traceback.clear_frames(x.__traceback__)
        todo += [x.__cause__, x.__context__]


class _End:
    """Put by the receiver after the last batch of a finite run."""


class Receiver:
    """A thread that takes batches from the DataLoader, copies them out of the ring (into
    pinned memory when pinning), restores their order and queues them, so the training
    loop's thread spends no time on it. It owns the DataLoader iterator and shuts the
    workers down when it stops.

    Args:
        delivery: the loader's :class:`Delivery` (not the loader: no reference back).
        it: the DataLoader's iterator.
        run: the plan of the first epoch it delivers (see :class:`~loaders.order.resume.EpochRun`).
        continuous: go on into the following epochs.
    """

    def __init__(self, delivery: Delivery, it, run: "EpochRun", continuous: bool):
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._it = it
        self._gen = delivery.ordered(it, run, continuous)
        self._thread = threading.Thread(target=self._run, name="loaders-receiver", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._gen:
                if not self._put(item):
                    break
            else:
                self._put(_End())
        except BaseException as e:  # handed to the consumer, raised there
            _drop_frames(e)
            self._put(e)
        finally:
            self._gen.close()
            # The last references to the DataLoader iterator: deleting it stops its workers.
            self._gen = self._it = None

    def get(self):
        """The next item; raises what the thread raised."""
        while True:
            try:
                item = self._q.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    raise LoaderError("internal error: the receiving thread ended early") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
