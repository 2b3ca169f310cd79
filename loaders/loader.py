""":func:`make_loader`: batches of shardgen shards for training and evaluation, on one
or many GPUs, with the same number of batches on every rank."""

from __future__ import annotations

import contextlib
import multiprocessing
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader

from shardgen.redact import redact
from shardgen.storage import DEFAULT_TIMEOUT_S

from .deliver.delivery import Delivery, Receiver
from .deliver.ring import Ring
from .deliver.worker import ShardStream
from .dist import world
from .errors import LoaderError, UsageError
from .order.plan import MODES
from .order.resume import EpochRun, LoaderState, Phase
from .order.sequence import check_balance
from .order.shuffle import slot_seed
from .read.args import as_int
from .read.decoded.place import check_decoded_args, plan_split
from .read.shards.sources import DEFAULT_CHUNK
from .read.spec import open_split, split_labels
from .transform import check_picklable

__all__ = ["make_loader", "ShardLoader"]


def _own_generator(ds: ShardStream, epoch: int) -> torch.Generator:
    """The DataLoader's own generator: without one it draws its workers' base seed from
    torch's global RNG at every ``iter()``, changing the user's random stream."""
    return torch.Generator().manual_seed(slot_seed(ds.seed, epoch, ds.rank, 2))


class ShardLoader:
    """Iterable over the batches of one rank; made by :func:`make_loader`.

    Iterating yields ``(images, labels)`` (``uint8 [B,1,S,S]``, ``int64 [B]``; for a
    multi-label build ``float32 [B, C]`` multi-hot targets, padding rows all -100) or, with
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
        self.dataset, self.num_workers, self.pin_memory = dataset, num_workers, pin_memory
        self.prefetch_factor, self.timeout = prefetch_factor, timeout
        self.multiprocessing_context = multiprocessing_context
        self._delivery = Delivery(dataset, num_workers, pin_memory)
        self._rx: Receiver | None = None
        self._next_epoch: int | None = None
        self._run: EpochRun | None = None   # the epoch run being (or last) iterated
        self._yielded = 0                   # batches of it yielded so far
        self._pending: LoaderState | None = None

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
        """Select the epoch: reseeds the shard order and the shuffle buffer (train mode).

        After :meth:`load_state_dict`, the state's own epoch keeps the loaded position;
        any other epoch discards it.
        """
        self.dataset.epoch = as_int(epoch, "epoch", 0)
        if self._pending is not None and self._pending.epoch != epoch:
            self._pending = None

    # -- position ------------------------------------------------------------------------
    def _state(self) -> LoaderState:
        ds = self.dataset
        if self._pending is not None:
            return self._pending
        if self._run is not None and self._run.epoch == ds.epoch:
            epoch, phases = self._run.epoch, self._run.history(self._yielded)
        else:
            epoch, phases = ds.epoch, (Phase(ds.layout(self.num_workers), 0),)
        return LoaderState(ds.spec.split, ds.spec.split_xxh64(), ds.mode, ds.seed, ds.balance, epoch, phases)

    def state_dict(self) -> dict[str, Any]:
        """The loader's position: a dict of plain JSON values, the same on every rank.

        It holds the epoch, the batches every rank has yielded in it, the seed, the
        balance and the layout (world size, workers, batch size, shuffle buffer) they
        were yielded with, and identifies the split by its shards' checksums. Taken
        between batches, it costs microseconds; save it from rank 0 with the model.
        """
        return self._state().to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (from :meth:`state_dict`): call before iterating.

        The next iteration of the state's epoch (``set_epoch`` with another epoch
        discards the state) yields exactly the batches an uninterrupted run would have
        yielded from there on the same layout; on another world size, worker count,
        batch size or shuffle buffer, it yields every sample of the epoch not yet
        yielded once across the ranks (see :mod:`loaders.order.resume`). Samples already
        yielded are neither read nor decoded.

        Raises:
            UsageError: not a loader state, one of another split, build, mode, seed or
                balance, or one this loader cannot have had (:meth:`LoaderState.check_bounds`).
        """
        st = LoaderState.from_dict(state)
        ds = self.dataset
        st.check_fits(self._state())
        st.check_bounds(sum(s.samples for s in ds.spec.shards))  # before any work
        ds.run(st.epoch, self.num_workers, st.phases)  # checks the position against the split
        self.close()
        self._run, self._yielded = None, 0
        ds.epoch = st.epoch
        self._pending = st

    @property
    def class_counts(self) -> dict[str, int]:
        """Samples of each class in the last epoch iterated (or the selected one), across
        all ranks, from the plan (padding and samples skipped for bad data included); in a
        multi-label build, the positives of each class."""
        ds = self.dataset
        run = self._run if self._run is not None else ds.run(ds.epoch, self.num_workers)
        if ds.spec.labels is None:
            ds.spec.labels = split_labels(ds.spec)
        counts = run.class_counts(ds.spec.labels, [s.samples for s in ds.spec.shards], len(ds.spec.classes))
        return {c: int(n) for c, n in zip(ds.spec.classes, counts)}

    def __len__(self) -> int:
        return len(self.dataset)

    def _start(self, run: EpochRun) -> None:
        """(Re)start the workers (and the receiving thread) at ``run``."""
        self.close()
        ds = self.dataset
        epoch = run.epoch
        ds.epoch = epoch
        kw: dict[str, Any] = {}
        if self.num_workers > 0:
            kw.update(prefetch_factor=self.prefetch_factor, multiprocessing_context=self.multiprocessing_context,
                      timeout=self.timeout)
            if ds.ring is None:
                ds.ring = Ring(self.num_workers, self.prefetch_factor + 1, ds.batch_size, ds.spec.size)
            ds.ring.state.zero_()
        dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=False,
                        persistent_workers=False, generator=_own_generator(ds, epoch), **kw)
        it = iter(dl)  # in this (main) thread: the DataLoader sets its signal handlers here
        self._rx = Receiver(self._delivery, it, run, ds.continuous)
        self._rx.start()
        self._next_epoch = epoch

    def close(self) -> None:
        """Stop the worker processes (they otherwise run ahead into the next epoch)."""
        rx, self._rx = getattr(self, "_rx", None), None
        self._next_epoch = None
        if rx is not None:
            rx.stop()

    def __del__(self):
        with contextlib.suppress(Exception):
            self.close()

    def __iter__(self) -> Iterator:
        ds = self.dataset
        epoch = ds.epoch
        resume, self._pending = self._pending, None
        ds.resume = (epoch, resume.phases) if resume is not None and resume.epoch == epoch else None
        run = ds.run(epoch, self.num_workers)
        self._run, self._yielded = run, 0
        if self.num_workers == 0:  # everything in this thread
            self.close()
            it = iter(DataLoader(ds, batch_size=None, num_workers=0, generator=_own_generator(ds, epoch)))
            for _, batch in self._delivery.ordered(it, run, False):
                self._yielded += 1
                yield batch
            return
        continuous = ds.continuous
        if (not continuous or getattr(self, "_rx", None) is None or self._next_epoch != epoch
                or ds.resume is not None):
            self._start(run)
        rx = self._rx
        finished = False
        try:
            for _ in range(run.batches - run.start):
                e, batch = rx.get()
                if e != epoch:
                    raise LoaderError(f"internal error: got a batch of epoch {e} in epoch {epoch}")
                self._yielded += 1
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
        return (f"ShardLoader({redact(s.spec.root)!r}, split={s.spec.split!r}, mode={s.mode!r}, "
                f"batch_size={s.batch_size}, "
                f"rank={s.rank}/{s.world_size}, workers={self.num_workers}, batches={len(self)})")


def make_loader(source: Any, split: str = "train", batch_size: int = 256, mode: str = "train",
                num_workers: int = 4, seed: int = 0, with_keys: bool = False, *,
                shuffle_buffer: int = 1000, on_error: str = "raise", storage_options: dict | None = None,
                cache_dir: str | None = None, cache_limit: Any = "10GB", retries: int = 5,
                chunk_size: int = DEFAULT_CHUNK, pin_memory: bool | None = None, prefetch_factor: int = 2,
                multiprocessing_context: Any = None, timeout: float = 0,
                overlap_epochs: bool = True, io_timeout: float | None = DEFAULT_TIMEOUT_S,
                transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                balance: str | dict[str, float] | None = None,
                decoded_cache: Any = "auto", decoded_cache_limit: Any = "auto", verify: bool = True) -> ShardLoader:
    """Stream a shardgen split as batches, the same number on every rank.

    Rank and world size come from ``torch.distributed`` when it is initialised (call
    this after ``init_process_group``), else from ``RANK``/``WORLD_SIZE`` (torchrun),
    else a single process. The split, classes, image size and shard list come from
    the manifest; each rank and worker works out its own share from it (see
    :mod:`loaders.order.plan`), so there is no node splitter to pass.

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
    ``ignore_index``) and an all-zero image (and key ``""``). A multi-label build
    (manifest ``task`` ``"multilabel"``) yields ``float32 [B, C]`` multi-hot targets; a
    padding row is -100 in every position (mask: ``targets[:, 0] != -100``).

    Args:
        source: a build folder, its ``manifest.json``, or a URL of either that fsspec
            opens (``s3://``, ``http(s)://``, ``gs://``, ``file://``...).
        split: split name (default ``train``).
        batch_size: samples per batch on each rank (default 256).
        mode: ``train`` or ``eval`` (default ``train``).
        num_workers: DataLoader worker processes (default 4; 0 loads in this process).
        seed: seed of the shard order and shuffle buffer (default 0); with_keys: also yield
            the list of sample keys (default false).
        shuffle_buffer: samples held (encoded, ~35 KB each at 256x256) per worker for
            shuffling in train mode (default 1000; 0 or 1 = no buffer shuffle).
        on_error: ``raise`` (default): bad data raises :class:`LoaderError` naming the
            shard and key; ``skip``: log a warning, count it in ``loader.skipped`` and put
            a padding sample (label -100, zero image, key "") in its place, so batch
            counts stay equal and no other sample moves.
        storage_options: fsspec options for remote sources (the S3 endpoint also comes from
            ``AWS_ENDPOINT_URL``).
        cache_dir: for remote sources, a private folder keeping a verified copy of every
            shard streamed, read (and checked again) instead of the network in later
            epochs. Ignored for local builds.
        cache_limit: most bytes the cache holds (int, or ``"10GB"``; default 10 GB), LRU out first.
        retries: further attempts of a failed remote read (default 5, backoff 0.5 s doubling
            up to 8 s; none later than ``2 * io_timeout`` after the first try).
        chunk_size: bytes per remote ranged request (default 8 MiB); pin_memory: (default: with CUDA).
        prefetch_factor: batches each worker prepares ahead (default 2).
        multiprocessing_context: start method for workers (default: PyTorch's, ``fork`` on
            Linux); any works (``spawn`` and ``forkserver`` start slower and need the
            script's ``if __name__ == "__main__":`` guard).
        timeout: seconds to wait for a batch from a worker (default 0: no limit; the
            DataLoader's own timeout, not the network's: see ``io_timeout``).
        overlap_epochs: in train mode with workers, keep the workers running from one
            epoch into the next (default true): no restart and no idle workers at epoch
            ends. Batches still come out in the same order as from a fresh start, but
            only if ``set_epoch`` goes up by one each epoch; any other epoch (or a loop
            left early) restarts the workers. ``close()`` stops them.
        io_timeout: connect and read timeout of every remote request (manifest and
            shards), in seconds (default 30; None: the fsspec backend's own, e.g.
            aiohttp's 5 minutes). A server that accepts connections but never answers
            ends in :class:`UsageError` naming the manifest (after about 2 timeouts) or
            :class:`LoaderError` naming the shard (about 2-3 timeouts), never a hang.
            Timeouts set in ``storage_options`` win (see ``docs/loaders.md``).
        transform: a callable applied to each sample in the workers (default None: none):
            it gets a ``uint8 [1,S,S]`` tensor (its own copy) and must return a ``uint8``
            tensor of the same shape (batches have fixed slots: a transform changing the
            size or dtype raises :class:`LoaderError` naming the shard and key, as does
            one that raises, whatever ``on_error``). Before each call torch's default
            CPU generator is seeded from ``(seed, epoch, sample key)``
            (:func:`loaders.transform.transform_seed`), so transforms drawing from it, as
            torchvision's ``transforms.v2`` do, are reproducible across runs and worker
            counts. With ``num_workers=0`` the generator's state is restored after each
            call. Must pickle under ``spawn``/``forkserver`` (a module-level function or
            class, not a lambda).
        balance: class balance of train epochs (default None: every sample once).
            ``"class"``: every class with samples gets an equal share of the epoch;
            a dict ``{class name: weight >= 0}`` naming every class: shares in
            proportion to the weights. The epoch keeps the split's size (so
            ``len(loader)`` is unchanged); class ``c`` contributes exactly its share
            ``T_c`` (largest-remainder rounding), each of its ``n_c`` samples ``T_c //
            n_c`` times plus once more for ``T_c % n_c`` of them chosen by ``(seed,
            epoch, c)`` (so an over-represented class shows a different subset each
            epoch). Repeats of a sample go to different passes over the shards, far
            apart in the epoch. Per-class counts: ``loader.class_counts``. Needs
            ``<split>/dataset.json``; train mode only.
        decoded_cache: the node-local cache of decoded samples (see ``docs/loaders.md``):
            each sample is decoded once per node, by whichever rank and worker reads it
            first, and later epochs copy its pixels from a memory-mapped file instead.
            Batches are bitwise the same with and without it. ``"auto"`` (default):
            ``$SHARDGEN_DECODED_CACHE`` if set (a folder, or ``off``), else
            ``/dev/shm/shardgen-<user>`` when the decoded split fits there, else
            ``~/.cache/shardgen/decoded`` (``$XDG_CACHE_HOME``); a folder: that folder;
            None or False: off.
        decoded_cache_limit: the most bytes the cache folder holds, all builds and splits
            together (int, or ``"8GB"``, ``"512MiB"``). Default ``"auto"``: half of the
            folder's file system, and no more than its free space (plus what the cache
            already holds) less a reserve of 10% of it (at most 2 GiB). When the split
            does not fit, the longest run of its shards (manifest order) that fits is
            cached and the rest is decoded every epoch; older entries of other splits are
            evicted first. A decoded sample takes ``S*S + 77`` bytes (65.6 KB at 256x256).
        verify: yield no sample of a shard before its bytes matched the manifest's size and
            xxh64 (default true). ``False`` is **unsafe** (a changed shard is trained on):
            only for storage you own (``docs/security.md``).

    Returns:
        A :class:`ShardLoader`.

    Raises:
        UsageError: bad arguments, a missing/invalid manifest, an unknown or empty split.
    """
    if balance is not None and mode != "train":
        raise UsageError("balance applies to mode='train' only (eval yields every sample once)")
    if transform is not None and not callable(transform):
        raise UsageError(f"transform must be callable or None, got {type(transform).__name__}")
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    batch_size = as_int(batch_size, "batch_size", 1)
    num_workers = as_int(num_workers, "num_workers", 0)
    seed = as_int(seed, "seed", 0)
    shuffle_buffer = as_int(shuffle_buffer, "shuffle_buffer", 0)
    prefetch_factor = as_int(prefetch_factor, "prefetch_factor", 1)
    check_decoded_args(decoded_cache, decoded_cache_limit)
    spec = open_split(source, split, storage_options, on_error, cache_dir, cache_limit, retries, chunk_size,
                      io_timeout, verify)
    balance = check_balance(balance, spec.classes)
    if balance is not None and spec.multilabel:
        raise UsageError("balance needs a single-label build; this one is multi-label")
    spec.decoded = plan_split(spec, decoded_cache, decoded_cache_limit)
    rank, size = world()
    ctx = multiprocessing_context
    if isinstance(ctx, str):
        ctx = multiprocessing.get_context(ctx)
    skipped = (ctx or multiprocessing).Value("q", 0)
    check_picklable(transform, ctx, num_workers)
    if balance is not None:
        spec.labels = split_labels(spec)
    ds = ShardStream(spec, batch_size, mode, seed, rank, size, shuffle_buffer, bool(with_keys), skipped,
                     continuous=bool(overlap_epochs) and num_workers > 0, transform=transform, balance=balance)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return ShardLoader(ds, num_workers, bool(pin_memory), prefetch_factor, ctx, timeout)
