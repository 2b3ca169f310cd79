""":func:`make_loader`: batches of shardgen shards for training and evaluation, on one
or many GPUs, with the same number of batches on every rank."""

from __future__ import annotations

import logging
import multiprocessing
import queue
import random
import threading
import time
from typing import Any, Iterator

import fsspec
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from shardgen.storage import open_build

from .dist import world
from .errors import LoaderError, UsageError
from .plan import MODES, batch_order, batches_per_rank, extra_shift
from .sources import DEFAULT_CHUNK, ShardInfo, parse_size
from .stream import PAD_LABEL, SampleReader, Spec, check_on_error, decode_into, shuffled, slot_plan, slot_seed

__all__ = ["make_loader", "ShardLoader", "ShardStream", "open_split"]

log = logging.getLogger("loaders")


class _WorkerFailure:
    """Sent through the DataLoader in place of a batch when a worker hits bad data."""

    def __init__(self, message: str):
        self.message = message


def _as_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, got {value}")
    return value


def open_split(source: Any, split: str, storage_options: dict | None = None, on_error: str = "raise",
               cache_dir: str | None = None, cache_limit: Any = "10GB", retries: int = 5,
               chunk_size: int = DEFAULT_CHUNK) -> Spec:
    """Read the manifest of ``source`` and describe ``split`` for the workers.

    Raises:
        UsageError: no manifest, no such split, an empty split, or shards that are not PNG.
    """
    build = open_build(str(source), storage_options)
    info = build.split(str(split))
    image = build.manifest.get("image", {})
    if image.get("ext", "png") != "png" or image.get("mode", "L") != "L":
        raise UsageError(f"{build.root}: the loaders read 8-bit grayscale PNG shards; this build holds "
                         f"{image.get('mode')} {image.get('ext')}")
    shards = [ShardInfo(s["path"], int(s["samples"]), int(s["bytes"]), str(s["xxh64"])) for s in info["shards"]]
    if sum(s.samples for s in shards) == 0:
        raise UsageError(f"{build.root}: split {split!r} holds no samples")
    local = isinstance(build.fs, fsspec.implementations.local.LocalFileSystem)
    return Spec(
        root=build.root, local_root=build.path if local else None,
        storage_options=dict(storage_options or {}), split=str(split), shards=shards,
        classes=build.classes, size=int(image["size"]), on_error=check_on_error(on_error),
        cache_dir=None if cache_dir is None else str(cache_dir),
        cache_limit=parse_size(cache_limit) if cache_dir is not None else 0,
        retries=_as_int(retries, "retries", 0), chunk_size=_as_int(chunk_size, "chunk_size", 4096),
    )


class ShardStream(IterableDataset):
    """The IterableDataset behind :func:`make_loader`: each worker yields whole batches.

    Use :func:`make_loader` rather than this class directly; it is public for people
    who build their own ``DataLoader`` (then pass ``batch_size=None`` and the same
    ``num_workers`` as ``workers`` here).
    """

    def __init__(self, spec: Spec, batch_size: int, mode: str, seed: int, rank: int, world_size: int,
                 shuffle_buffer: int, with_keys: bool, skipped=None, continuous: bool = False):
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
        self.ring: _Ring | None = None
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
            yield _WorkerFailure(str(e))

    def _batches(self, worker: int, workers: int, in_worker: bool, epoch: int) -> Iterator:
        spec, B = self.spec, self.batch_size
        plan = slot_plan(spec, B, self.rank, self.world_size, worker, workers, self.mode, self.seed, epoch)
        if plan.batches == 0:
            return
        reader = SampleReader(spec, self.skipped)
        samples = reader.read(plan)
        if self.mode == "train":
            rng = random.Random(slot_seed(self.seed, epoch, self.rank, worker, 1))
            samples = shuffled(samples, self.shuffle_buffer, rng)
        n_classes = len(spec.classes)
        ring = self.ring if in_worker else None
        out = _BatchOut(ring, worker, B, spec.size, self.with_keys)
        produced = 0
        arr, labels, keys = out.start()
        i = 0
        for s in samples:  # the plan makes these fit exactly in plan.batches batches
            if produced == plan.batches:
                raise LoaderError(f"internal error: more samples than planned in rank {self.rank} worker {worker}")
            try:
                labels[i] = decode_into(arr[i, 0], s, spec.size, n_classes)
            except LoaderError as e:
                if spec.on_error == "raise":
                    raise
                log.warning("skipped: %s", e)
                reader.count_skip()
                continue
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


class _Ring:
    """Batch slots in shared memory, allocated once by the main process.

    Worker ``w`` writes its batches into ``images[w, k]`` for ``k`` cycling through its
    slots and sends only labels and keys through the DataLoader; the main process copies
    the slot out (into pinned memory when pinning) and frees it. This replaces a fresh
    shared-memory tensor per batch (page faults on both sides, every batch) with one
    copy into reused memory.
    """

    def __init__(self, workers: int, slots: int, batch_size: int, size: int):
        shape = (workers, slots, batch_size, 1, size, size)
        self.images = _shared_empty(shape, torch.uint8)
        self.state = _shared_empty((workers, slots), torch.int32)
        self.state.zero_()
        self.slots = slots


def _shared_empty(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    proto = torch.empty(0, dtype=dtype)
    numel = 1
    for d in shape:
        numel *= d
    storage = proto._typed_storage()._new_shared(numel, device="cpu")
    return proto.new(storage).view(shape)


class _BatchOut:
    """Where a worker assembles its batches: ring slots (in workers) or fresh tensors."""

    def __init__(self, ring: _Ring | None, worker: int, batch_size: int, size: int, with_keys: bool):
        self.ring, self.worker, self.B, self.S, self.with_keys = ring, worker, batch_size, size, with_keys
        self.k = -1
        self._state = ring.state.numpy() if ring is not None else None

    def start(self):
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

    def finish(self):
        keys = self.keys if self.with_keys else None
        if self.ring is None:
            return _Batch(-1, self.images, self.labels, keys)
        return _Batch(self.k, None, self.labels, keys)


class _Batch:
    """A batch on its way to the main process (``slot >= 0``: the pixels are in the ring)."""

    __slots__ = ("slot", "images", "labels", "keys")

    def __init__(self, slot: int, images, labels, keys):
        self.slot, self.images, self.labels, self.keys = slot, images, labels, keys

    def __reduce__(self):
        return (_Batch, (self.slot, self.images, self.labels, self.keys))


class _Delivery:
    """The main-process side of a loader's batches (no reference to the ShardLoader, so a
    loader nobody holds any more is collected and its workers stopped)."""

    def __init__(self, dataset: ShardStream, num_workers: int, pin_memory: bool):
        self.dataset, self.num_workers, self.pin_memory = dataset, num_workers, pin_memory
        self._fence = threading.Lock()

    def _receive(self, worker: int, b: "_Batch") -> tuple:
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

    def _ordered(self, it, epoch: int, continuous: bool) -> Iterator[tuple[int, tuple]]:
        """``(epoch, batch)`` in each epoch's canonical order (see :func:`batch_order`),
        epoch after epoch when ``continuous``; else one epoch, then the workers run out."""
        ds = self.dataset
        workers = max(1, self.num_workers)
        L = len(ds)
        stash: dict = {}
        while True:
            for w, j in batch_order(L, workers, extra_shift(L, workers, ds.mode, epoch)):
                want = (epoch, w, j)
                while want not in stash:
                    try:
                        item = next(it)
                    except StopIteration:
                        raise LoaderError(f"internal error: rank {ds.rank} worker {w} ended before its batch {j} "
                                          f"of epoch {epoch}") from None
                    if isinstance(item, _WorkerFailure):
                        raise LoaderError(item.message)
                    tag, batch = item
                    stash[tuple(tag)] = self._receive(tag[1], batch)
                yield epoch, stash.pop(want)
            if not continuous:
                # Let the workers run to their end: a shard read to its last sample
                # still has to be closed (and a streamed copy verified and cached).
                for item in it:
                    if isinstance(item, _WorkerFailure):
                        raise LoaderError(item.message)
                    raise LoaderError(f"internal error: rank {ds.rank} got more batches than planned")
                return
            epoch += 1


class _End:
    """Put by the receiver after the last batch of a finite run."""


class _Receiver:
    """A thread that takes batches from the DataLoader, copies them out of the ring (into
    pinned memory when pinning), restores their order and queues them, so the training
    loop's thread spends no time on it. It owns the DataLoader iterator and shuts the
    workers down when it stops."""

    def __init__(self, loader: "ShardLoader", it, epoch: int, continuous: bool):
        self._q: queue.Queue = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._it = it
        self._gen = loader._delivery._ordered(it, epoch, continuous)  # no reference to the loader
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
            self._put(e)
        finally:
            self._gen.close()
            if hasattr(self._it, "_shutdown_workers"):
                self._it._shutdown_workers()
            self._it = None

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


class ShardLoader:
    """Iterable over the batches of one rank; made by :func:`make_loader`.

    Iterating yields ``(images, labels)`` (``uint8 [B,1,S,S]``, ``int64 [B]``) or, with
    ``with_keys``, ``(images, labels, keys)``; exactly ``len(loader)`` batches per epoch
    on every rank. Bad data raises :class:`loaders.LoaderError` naming the shard and key.

    Attributes:
        dataset: the :class:`ShardStream`.
        classes: class names (label ``i`` is ``classes[i]``).
        image_size: side of the square images in pixels.
        rank, world_size: this process's place in the job.
        samples: samples in the split (all ranks together).
    """

    def __init__(self, dataset: ShardStream, num_workers: int, pin_memory: bool, prefetch_factor: int | None,
                 multiprocessing_context: Any = None, timeout: float = 0):
        self.dataset = dataset
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.multiprocessing_context = multiprocessing_context
        self.timeout = timeout
        self._delivery = _Delivery(dataset, num_workers, pin_memory)
        self._rx: _Receiver | None = None
        self._next_epoch: int | None = None

    # -- facts -------------------------------------------------------------------------
    @property
    def classes(self) -> list[str]:
        return list(self.dataset.spec.classes)

    @property
    def image_size(self) -> int:
        return self.dataset.spec.size

    @property
    def batch_size(self) -> int:
        return self.dataset.batch_size

    @property
    def rank(self) -> int:
        return self.dataset.rank

    @property
    def world_size(self) -> int:
        return self.dataset.world_size

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.dataset.spec.shards)

    @property
    def epoch(self) -> int:
        return self.dataset.epoch

    @property
    def skipped(self) -> int:
        """Samples skipped so far (with ``on_error="skip"``), all epochs and workers of this rank."""
        v = self.dataset.skipped
        return 0 if v is None else int(v.value)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: reseeds the shard order and the shuffle buffer (train mode)."""
        self.dataset.epoch = _as_int(epoch, "epoch", 0)

    def __len__(self) -> int:
        return len(self.dataset)

    def _start(self, epoch: int) -> None:
        """(Re)start the workers (and the receiving thread) at ``epoch``."""
        self.close()
        ds = self.dataset
        ds.epoch = epoch
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw.update(prefetch_factor=self.prefetch_factor, multiprocessing_context=self.multiprocessing_context,
                      timeout=self.timeout)
            if ds.ring is None:
                ds.ring = _Ring(self.num_workers, self.prefetch_factor + 1, ds.batch_size, ds.spec.size)
            ds.ring.state.zero_()
        dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=False,
                        persistent_workers=False, **kw)
        it = iter(dl)  # in this (main) thread: the DataLoader sets its signal handlers here
        self._rx = _Receiver(self, it, epoch, ds.continuous)
        self._rx.start()
        self._next_epoch = epoch

    def close(self) -> None:
        """Stop the worker processes (they otherwise run ahead into the next epoch)."""
        rx, self._rx = getattr(self, "_rx", None), None
        self._next_epoch = None
        if rx is not None:
            rx.stop()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __iter__(self) -> Iterator:
        ds = self.dataset
        epoch = ds.epoch
        L = len(ds)
        if self.num_workers == 0:  # everything in this thread
            self.close()
            it = iter(DataLoader(ds, batch_size=None, num_workers=0))
            for _, batch in self._delivery._ordered(it, epoch, False):
                yield batch
            return
        continuous = ds.continuous
        if not continuous or getattr(self, "_rx", None) is None or self._next_epoch != epoch:
            self._start(epoch)
        rx = self._rx
        finished = False
        try:
            for _ in range(L):
                e, batch = rx.get()
                if e != epoch:
                    raise LoaderError(f"internal error: got a batch of epoch {e} in epoch {epoch}")
                yield batch
            if not continuous:
                rx.get()  # the end (or an error found while the workers ran out)
            finished = True
        finally:
            if finished and continuous:
                self._next_epoch = epoch + 1
            else:
                self.close()

    def __repr__(self) -> str:
        s = self.dataset
        return (f"ShardLoader({s.spec.root!r}, split={s.spec.split!r}, mode={s.mode!r}, batch_size={s.batch_size}, "
                f"rank={s.rank}/{s.world_size}, workers={self.num_workers}, batches={len(self)})")


def make_loader(source: Any, split: str = "train", batch_size: int = 256, mode: str = "train",
                num_workers: int = 4, seed: int = 0, with_keys: bool = False, *,
                shuffle_buffer: int = 1000, on_error: str = "raise", storage_options: dict | None = None,
                cache_dir: str | None = None, cache_limit: Any = "10GB", retries: int = 5,
                chunk_size: int = DEFAULT_CHUNK, pin_memory: bool | None = None, prefetch_factor: int = 2,
                multiprocessing_context: Any = None, timeout: float = 0,
                overlap_epochs: bool = True) -> ShardLoader:
    """Stream a shardgen split as batches, the same number on every rank.

    Rank and world size come from ``torch.distributed`` when it is initialised (call
    this after ``init_process_group``), else from ``RANK``/``WORLD_SIZE`` (torchrun),
    else a single process. The split, classes, image size and shard list come from
    the manifest; each rank and worker works out its own share from it (see
    :mod:`loaders.plan`), so there is no node splitter to pass.

    ``mode="train"``: shard order and a shuffle buffer of ``shuffle_buffer`` samples,
    reseeded by ``set_epoch`` (identical on every rank for a given ``seed`` and epoch,
    and reproducible for the same seed, epoch, world size, workers and batch size).
    Every rank yields ``len(loader) = total // (batch_size * world)`` full batches
    (at least 1). To get there an epoch drops the last ``total - len(loader) *
    batch_size * world`` samples of that epoch's shard order (the tail of its last
    shard(s); a different tail each epoch) and repeats nothing, except when the split
    has fewer samples than ``batch_size * world``: then samples repeat to fill the one
    batch.

    ``mode="eval"``: manifest order, no shuffle; across all ranks every sample is
    yielded exactly once; every rank yields ``ceil(total / (batch_size * world))``
    batches, the last ones padded with label ``-100`` (``cross_entropy``'s default
    ``ignore_index``) and an all-zero image (and key ``""``).

    Args:
        source: a build folder, its ``manifest.json``, or a URL of either that fsspec
            opens (``s3://``, ``http(s)://``, ``gs://``, ``file://``...).
        split: split name (default ``train``).
        batch_size: samples per batch on each rank (default 256).
        mode: ``train`` or ``eval`` (default ``train``).
        num_workers: DataLoader worker processes (default 4; 0 loads in this process).
        seed: seed of the shard order and shuffle buffer (default 0).
        with_keys: also yield the list of sample keys (default false).
        shuffle_buffer: samples held (encoded, ~35 KB each at 256x256) per worker for
            shuffling in train mode (default 1000; 0 or 1 = no buffer shuffle).
        on_error: ``raise`` (default): bad data raises :class:`LoaderError` naming the
            shard and key; ``skip``: log a warning, count it in ``loader.skipped`` and put
            a padding sample (label -100, zero image) at the end of that worker's batches,
            so batch counts stay equal.
        storage_options: fsspec options for remote sources (e.g. ``{"client_kwargs":
            {"endpoint_url": ...}}``); the S3 endpoint also comes from ``AWS_ENDPOINT_URL``.
        cache_dir: for remote sources, a folder keeping a verified copy (size and xxh64
            checked against the manifest) of every shard streamed, read instead of the
            network in later epochs. Ignored for local builds.
        cache_limit: the most bytes the cache may hold (int, or ``"10GB"``, ``"512MiB"``;
            default 10 GB); least recently used shards are evicted first.
        retries: further attempts of a failed remote read before giving up with an
            error naming the shard (default 5, backoff 0.5 s doubling up to 8 s).
        chunk_size: bytes per ranged request for remote shards (default 8 MiB).
        pin_memory: pin batches for fast GPU copies (default: when CUDA is available).
        prefetch_factor: batches each worker prepares ahead (default 2).
        multiprocessing_context: start method for workers (default: PyTorch's).
        timeout: seconds to wait for a batch from a worker (default 0: no limit).
        overlap_epochs: in train mode with workers, keep the workers running from one
            epoch into the next (default true): no restart and no idle workers at epoch
            ends. Batches still come out in the same order as from a fresh start, but
            only if ``set_epoch`` goes up by one each epoch; any other epoch (or a loop
            left early) restarts the workers. ``close()`` stops them.

    Returns:
        A :class:`ShardLoader`.

    Raises:
        UsageError: bad arguments, a missing/invalid manifest, an unknown or empty split.
    """
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    batch_size = _as_int(batch_size, "batch_size", 1)
    num_workers = _as_int(num_workers, "num_workers", 0)
    seed = _as_int(seed, "seed", 0)
    shuffle_buffer = _as_int(shuffle_buffer, "shuffle_buffer", 0)
    prefetch_factor = _as_int(prefetch_factor, "prefetch_factor", 1)
    spec = open_split(source, split, storage_options, on_error, cache_dir, cache_limit, retries, chunk_size)
    rank, size = world()
    ctx = multiprocessing_context
    if isinstance(ctx, str):
        ctx = multiprocessing.get_context(ctx)
    skipped = (ctx or multiprocessing).Value("q", 0)
    ds = ShardStream(spec, batch_size, mode, seed, rank, size, shuffle_buffer, bool(with_keys), skipped,
                     continuous=bool(overlap_epochs) and num_workers > 0)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return ShardLoader(ds, num_workers, bool(pin_memory), prefetch_factor, ctx, timeout)
