"""Which samples each (rank, worker) reads in an epoch, decided from the manifest alone.

The manifest gives the number of samples of every shard, so every process can work
out, without talking to the others, exactly which samples it yields and how many
batches that makes. That is what keeps every rank at the same number of batches.

An epoch is a sequence of samples: the split's shards in an order (shuffled with
``(seed, epoch)`` in train mode, the manifest's order in eval mode), each shard's
samples in stored order. Each rank takes one contiguous run of that sequence; the
rank's workers split that run into contiguous pieces, one per worker, sized in whole
batches. A piece may start or end inside a shard, so any number of shards works with
any number of ranks and workers (fewer shards than ranks x workers included).

Worker ``w`` of ``n`` yields ``L // n`` batches, plus one for ``L % n`` of the workers:
in eval mode workers ``0 .. L%n - 1``, so that (PyTorch's ``DataLoader`` taking batches
from its workers in turn) the rank's last batch comes from worker ``(L - 1) % n``; in
train mode the extra batches rotate by ``epoch * (L % n)`` so that, over many epochs,
every worker yields the same number of batches (workers stream on from one epoch into
the next; see :func:`batch_order`).

train:
    ``L = total // (batch_size * world)`` batches per rank (at least 1). The last
    ``total - L * batch_size * world`` samples of the epoch's sequence (the tail of the
    last shards in that epoch's order, so different samples every epoch) are dropped;
    nothing repeats, unless the split holds fewer samples than one batch on every
    rank (``batch_size * world``), in which case the sequence wraps round and early
    samples repeat to fill that single batch.
eval:
    ``L = ceil(total / (batch_size * world))`` batches per rank. Rank ``r`` gets
    ``total // world`` samples, plus one if ``r < total % world``, so every sample
    is read exactly once across ranks. The rank's padding (at most one batch) all
    lands in its very last batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .sequence import EpochSequence, Segment, Unit

__all__ = ["MODES", "SlotPlan", "batches_per_rank", "phase_batches", "shard_order", "plan_slot",
           "plan_phase_slot", "worker_batches", "extra_shift", "batch_order", "shard_sequence"]

MODES = ("train", "eval")


@dataclass(frozen=True)
class SlotPlan:
    """What one worker of one rank does in one epoch.

    Attributes:
        batches: full batches this worker yields.
        segments: the samples it reads, in order.
        real: samples read (``sum(s.count for s in segments)``).
        pad: padding samples (label -100, zero image) after them; ``real + pad ==
            batches * batch_size``.
        positions: the epoch positions (:class:`~loaders.order.sequence.EpochSequence`) of
            the samples read, in read order.
    """

    batches: int
    segments: tuple[Segment, ...]
    real: int
    pad: int
    positions: np.ndarray | None = field(default=None, compare=False, repr=False)


def _check(total: int, batch_size: int, world: int, mode: str) -> None:
    if mode not in MODES:
        raise UsageError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    if world < 1:
        raise UsageError(f"world size must be at least 1, got {world}")
    if total < 1:
        raise UsageError("the split holds no samples")


def batches_per_rank(total: int, batch_size: int, world: int, mode: str) -> int:
    """Batches every rank yields per epoch (the same on all ranks); see the module doc."""
    _check(total, batch_size, world, mode)
    per_step = batch_size * world
    if mode == "train":
        return max(1, total // per_step)
    return -(-total // per_step)


def extra_shift(batches: int, workers: int, mode: str, epoch: int) -> int:
    """First worker of those that yield one batch more (0 in eval; rotates in train)."""
    if mode != "train":
        return 0
    return (epoch * (batches % workers)) % workers


def worker_batches(batches: int, worker: int, workers: int, shift: int = 0) -> int:
    """Batches worker ``worker`` of ``workers`` yields when its rank yields ``batches``.

    The ``batches % workers`` extra batches go to workers ``shift, shift+1, ...`` (mod
    ``workers``).
    """
    return batches // workers + (1 if (worker - shift) % workers < batches % workers else 0)


def batch_order(batches: int, workers: int, shift: int = 0) -> list[tuple[int, int]]:
    """The order in which a rank hands out its batches: ``(worker, index in worker)``.

    Round ``j`` takes batch ``j`` of every worker that has one, in worker order, as a
    ``DataLoader`` started afresh would; the loader restores this order when workers
    run ahead into the next epoch, so the order depends only on seed and epoch.
    """
    counts = [worker_batches(batches, w, workers, shift) for w in range(workers)]
    return [(w, j) for j in range(max(counts, default=0)) for w in range(workers) if j < counts[w]]


def shard_order(n_shards: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    """The order in which the epoch visits the shards (same on every rank).

    Shuffled with a generator seeded by ``(seed, epoch)`` when ``shuffle``, else
    ``0 .. n_shards-1``.
    """
    if not shuffle:
        return list(range(n_shards))
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFFFFFF, 0x5A4D])
    return [int(i) for i in rng.permutation(n_shards)]


def shard_sequence(counts: list[int], seed: int, epoch: int, shuffle: bool) -> EpochSequence:
    """The epoch without balance: whole shards in :func:`shard_order`."""
    return EpochSequence([Unit(i, counts[i]) for i in shard_order(len(counts), seed, epoch, shuffle)])


def phase_batches(n: int, batch_size: int, world: int, mode: str, first: bool = True) -> int:
    """Batches per rank of a phase of ``n`` positions: :func:`batches_per_rank` for a
    whole epoch (``first``); for the rest of an epoch resumed on another layout, the
    full batches in train mode (possibly 0: no wrap-around) and every position once in eval."""
    if first:
        return batches_per_rank(n, batch_size, world, mode)
    _check(max(n, 1), batch_size, world, mode)
    per_step = batch_size * world
    return n // per_step if mode == "train" else -(-n // per_step)


def _slot_range(n: int, L: int, batch_size: int, rank: int, world: int, worker: int, workers: int,
                mode: str, epoch: int) -> tuple[int, int, int, int]:
    """``(start, size, pad, batches)``: the slot reads phase items ``start .. start+size-1``."""
    if not (0 <= rank < world and 0 <= worker < workers):
        raise UsageError(f"bad slot: rank {rank} of {world}, worker {worker} of {workers}")
    shift = extra_shift(L, workers, mode, epoch)
    per_worker = [worker_batches(L, w, workers, shift) * batch_size for w in range(workers)]
    if mode == "train":
        rank_start, sizes, pad = rank * L * batch_size, per_worker, 0
    else:
        base, extra = divmod(n, world)
        rank_start = rank * base + min(rank, extra)
        rank_real = base + (1 if rank < extra else 0)
        rank_pad = L * batch_size - rank_real
        last = (L - 1) % workers
        sizes = [k - (rank_pad if w == last else 0) for w, k in enumerate(per_worker)]
        pad = rank_pad if worker == last else 0
    return rank_start + sum(sizes[:worker]), sizes[worker], pad, per_worker[worker] // batch_size


def plan_phase_slot(seq: EpochSequence, items: np.ndarray | None, batch_size: int, rank: int, world: int,
                    worker: int, workers: int, mode: str, epoch: int) -> SlotPlan:
    """Plan one slot's share of an epoch phase.

    Args:
        seq: the epoch's positions.
        items: the phase's positions (ascending), or None for the whole epoch (then a
            split smaller than one global batch wraps round, see the module doc).
        batch_size, rank, world, worker, workers, mode, epoch: as :func:`plan_slot`.
    """
    whole = items is None
    n = seq.total if whole else len(items)
    L = phase_batches(n, batch_size, world, mode, whole)
    start, size, pad, batches = _slot_range(n, L, batch_size, rank, world, worker, workers, mode, epoch) \
        if L else (0, 0, 0, 0)
    idx = np.arange(start, start + size, dtype=np.int64)
    positions = idx % seq.total if whole else items[idx]
    return SlotPlan(batches=batches, segments=tuple(seq.segments(positions)), real=size, pad=pad,
                    positions=positions)


def plan_slot(counts: list[int], batch_size: int, rank: int, world: int, worker: int, workers: int,
              mode: str, seed: int = 0, epoch: int = 0) -> SlotPlan:
    """Plan the epoch of worker ``worker`` (of ``workers``) on rank ``rank`` (of ``world``).

    Args:
        counts: samples per shard, in manifest order.
        batch_size: samples per batch.
        rank, world: this process's rank and the world size.
        worker, workers: this DataLoader worker's id and the number of workers (1 when
            loading in the main process).
        mode: ``train`` (shuffled shard order, drop the tail) or ``eval`` (manifest order,
            every sample exactly once, padding).
        seed, epoch: select the shard order in train mode.

    Returns:
        The worker's :class:`SlotPlan`.
    """
    _check(sum(counts), batch_size, world, mode)
    seq = shard_sequence(list(counts), seed, epoch, mode == "train")
    return plan_phase_slot(seq, None, batch_size, rank, world, worker, workers, mode, epoch)
