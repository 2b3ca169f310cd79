"""Mid-epoch positions: the loader's state and the plan of a resumed epoch.

A loader's position is *global*: the epoch and the number of batches every rank has
yielded in it (the same on all ranks), with the layout (world size, workers, batch size,
shuffle buffer) they were yielded with. From that alone every process works out which
samples were already yielded, without reading or decoding them:

* **Same layout**: worker ``w`` had delivered the first ``c_w`` of its batches, where
  ``c_w`` counts ``w`` among the first ``k`` entries of :func:`~loaders.order.plan.batch_order`;
  it passes over the first ``c_w * batch_size`` samples of its shuffled stream (the
  shuffle is a permutation of item numbers drawn before any byte is read) and goes on
  exactly as the uninterrupted run would.
* **Another layout** (world size, workers, batch size or buffer): the positions every
  old slot consumed are taken out, and the rest of the epoch is a new *phase* over the
  remaining positions, planned like an epoch (:func:`~loaders.order.plan.plan_phase_slot`):
  each remaining sample once across ranks, equal batches per rank (train drops at most
  the tail that does not fill a batch on every rank; eval pads). A phase that had
  finished its batches ends the epoch. Phases chain: a resumed phase can be resumed again.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardgen.format.validate import shown

from ..errors import UsageError
from .plan import SlotPlan, batch_order, extra_shift, phase_batches, plan_phase_slot
from .sequence import EpochSequence
from .shuffle import output_order, slot_rng

__all__ = ["Layout", "Phase", "LoaderState", "EpochRun", "STATE_FORMAT", "MAX_WORLD_SIZE", "MAX_WORKERS", "MAX_SLOTS",
           "MAX_GLOBAL_BATCH", "MAX_PHASES", "MAX_EPOCH"]

STATE_FORMAT = "shardgen-loader-state/1"

# Bounds of a loader state (a state is a file anyone may have edited): values past them
# are refused before any work, so a tampered state is one line, never a hang or a
# MemoryError. Resuming costs about 50 us per (rank, worker) slot of each earlier phase.
#: Most ranks of one phase.
MAX_WORLD_SIZE = 1 << 16
#: Most DataLoader workers per rank.
MAX_WORKERS = 1024
#: Most (rank, worker) slots of an epoch's phases together (world size x workers, summed).
MAX_SLOTS = 1 << 17
#: Most samples of one step of all ranks together (batch size x world size).
MAX_GLOBAL_BATCH = 1 << 22
#: Most phases of one epoch (each one an elastic resume on another layout).
MAX_PHASES = 256
#: Largest epoch (an int64).
MAX_EPOCH = (1 << 63) - 1


@dataclass(frozen=True)
class Layout:
    """How a rank's batches are made: world size, DataLoader workers (1 for none),
    samples per batch and shuffle buffer (samples; train mode)."""

    world_size: int
    num_workers: int
    batch_size: int
    shuffle_buffer: int


@dataclass(frozen=True)
class Phase:
    """Part of an epoch: ``batches`` batches yielded per rank with ``layout``."""

    layout: Layout
    batches: int

    def to_dict(self) -> dict[str, int]:
        lay = self.layout
        return {"world_size": lay.world_size, "num_workers": lay.num_workers, "batch_size": lay.batch_size,
                "shuffle_buffer": lay.shuffle_buffer, "batches": self.batches}


def _int(d: dict, name: str, minimum: int, maximum: int | None = MAX_EPOCH) -> int:
    v = d.get(name)
    if (isinstance(v, bool) or not isinstance(v, int) or v < minimum
            or (maximum is not None and v > maximum)):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise UsageError(f"loader state: {name} must be an integer {bounds}, got {shown(v)}")
    return v


def _phase(d: Any) -> Phase:
    if not isinstance(d, dict):
        raise UsageError(f"loader state: a phase must be a dict, got {type(d).__name__}")
    lay = Layout(_int(d, "world_size", 1, MAX_WORLD_SIZE), _int(d, "num_workers", 1, MAX_WORKERS),
                 _int(d, "batch_size", 1, MAX_GLOBAL_BATCH), _int(d, "shuffle_buffer", 0))
    if lay.batch_size * lay.world_size > MAX_GLOBAL_BATCH:
        raise UsageError(f"loader state: batch_size {lay.batch_size} x world_size {lay.world_size} is more than "
                         f"{MAX_GLOBAL_BATCH} samples a step")
    return Phase(lay, _int(d, "batches", 0))


@dataclass(frozen=True)
class LoaderState:
    """What :meth:`ShardLoader.state_dict` returns, typed. ``phases``: the epoch's
    phases so far, the last one the one the state was taken in."""

    split: str
    split_xxh64: str
    mode: str
    seed: int
    balance: Any
    epoch: int
    phases: tuple[Phase, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values: ``torch.save``, ``json.dump`` and ``torch.distributed.checkpoint`` keep it."""
        d = {"format": STATE_FORMAT, "split": self.split, "split_xxh64": self.split_xxh64, "mode": self.mode,
             "seed": self.seed, "balance": self.balance, "epoch": self.epoch}
        d.update(self.phases[-1].to_dict())
        d["earlier"] = [p.to_dict() for p in self.phases[:-1]]
        return d

    def check_bounds(self, total: int) -> None:
        """Refuse phases this loader's split cannot have had: more batches than ``total``
        samples make on their layout, two phases in a row on one layout (a resume on the
        same layout continues its phase), or more slots than :data:`MAX_SLOTS`.

        Raises:
            UsageError: naming the phase and the value.
        """
        slots = 0
        for k, p in enumerate(self.phases):
            lay = p.layout
            slots += lay.world_size * lay.num_workers
            most = max(1, -(-total // (lay.batch_size * lay.world_size)))
            if p.batches > most:
                raise UsageError(f"loader state: phase {k} yielded {p.batches} batches, but {total} samples make "
                                 f"at most {most} batches of {lay.batch_size} on {lay.world_size} rank(s)")
            if k and lay == self.phases[k - 1].layout:
                raise UsageError(f"loader state: phases {k - 1} and {k} have the same layout")
        if slots > MAX_SLOTS:
            raise UsageError(f"loader state: {slots} (rank, worker) slots in the epoch's phases, more than {MAX_SLOTS}")

    def check_fits(self, mine: "LoaderState") -> None:
        """Refuse a state taken on another split, build, mode, seed or balance than ``mine``.

        Raises:
            UsageError: naming what differs.
        """
        if self.split_xxh64 != mine.split_xxh64 and self.split == mine.split:
            raise UsageError(f"loader state is for another build (its shards differ): "
                             f"{self.split_xxh64} != {mine.split_xxh64}")
        for name in ("split", "mode", "seed", "balance"):
            theirs, ours = getattr(self, name), getattr(mine, name)
            if theirs != ours:
                raise UsageError(f"loader state is for {name} {theirs!r}, this loader has {name} {ours!r}")

    @classmethod
    def from_dict(cls, d: Any) -> "LoaderState":
        """Parse and check a state dict.

        Raises:
            UsageError: not a loader state, or a malformed one (with the reason).
        """
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            raise UsageError(f"not a loader state (format {STATE_FORMAT!r} expected)")
        earlier = d.get("earlier", [])
        if not isinstance(earlier, list) or len(earlier) >= MAX_PHASES:
            raise UsageError(f"loader state: earlier must be a list of fewer than {MAX_PHASES} phases")
        for name in ("split", "split_xxh64", "mode"):
            if not isinstance(d.get(name), str):
                raise UsageError(f"loader state: {name} must be a string")
        phases = tuple(_phase(p) for p in earlier) + (_phase(d),)
        return cls(d["split"], d["split_xxh64"], d["mode"], _int(d, "seed", 0, None), d.get("balance"),
                   _int(d, "epoch", 0), phases)


class EpochRun:
    """One run through (the rest of) an epoch on one layout.

    Args:
        seq: the epoch's positions.
        layout: the current layout.
        mode, seed, epoch: the loader's.
        history: the epoch's phases already (partly) yielded (empty: a fresh epoch).

    Attributes:
        items: the positions this run's phase covers (None: the whole epoch).
        phase: the phase's number in the epoch.
        batches: batches per rank of the phase; ``start`` of them were already yielded
            (same layout), so the run yields ``batches - start``.
    """

    def __init__(self, seq: EpochSequence, layout: Layout, mode: str, seed: int, epoch: int,
                 history: tuple[Phase, ...] = ()):
        self.seq, self.layout, self.mode, self.seed, self.epoch = seq, layout, mode, seed, epoch
        base = history
        self.start = 0
        if history and history[-1].layout == layout:
            base, self.start = history[:-1], history[-1].batches
        self.base = base
        self.items: np.ndarray | None = None
        self.phase = 0
        for p in base:
            self.items = self._remaining(p)
            self.phase += 1
        n = seq.total if self.items is None else len(self.items)
        self.batches = phase_batches(n, layout.batch_size, layout.world_size, mode, self.items is None)
        if self.start > self.batches:
            raise UsageError(f"loader state: {self.start} batches yielded, but the epoch has {self.batches}")
        self.order = batch_order(self.batches, layout.num_workers,
                                 extra_shift(self.batches, layout.num_workers, mode, epoch))

    def history(self, yielded: int) -> tuple[Phase, ...]:
        """The phases after ``yielded`` batches of this run."""
        return self.base + (Phase(self.layout, self.start + yielded),)

    def slot(self, rank: int, worker: int, layout: Layout | None = None, items=None) -> SlotPlan:
        lay = layout or self.layout
        return plan_phase_slot(self.seq, self.items if layout is None else items, lay.batch_size, rank,
                               lay.world_size, worker, lay.num_workers, self.mode, self.epoch)

    def rng(self, rank: int, worker: int, phase: int | None = None) -> random.Random | None:
        if self.mode != "train":
            return None
        return slot_rng(self.seed, self.epoch, rank, worker, self.phase if phase is None else phase)

    def skip_batches(self, worker: int) -> int:
        """Batches of ``worker`` already yielded before this run (same layout)."""
        return sum(1 for w, _ in self.order[:self.start] if w == worker)

    def _remaining(self, p: Phase) -> np.ndarray:
        """The positions left after phase ``p`` (which ran over ``self.items``)."""
        lay, items = p.layout, self.items
        n = self.seq.total if items is None else len(items)
        L = phase_batches(n, lay.batch_size, lay.world_size, self.mode, items is None)
        if p.batches > L:
            raise UsageError(f"loader state: {p.batches} batches yielded, but that phase has {L}")
        universe = np.arange(n, dtype=np.int64) if items is None else items
        if p.batches == L:  # the phase, and so the epoch, was finished
            return universe[:0]
        order = batch_order(L, lay.num_workers, extra_shift(L, lay.num_workers, self.mode, self.epoch))
        counts = [0] * lay.num_workers  # batches each worker had delivered (the same on every rank)
        for ww, _ in order[:p.batches]:
            counts[ww] += 1
        done = []
        for r in range(lay.world_size):
            for w in range(lay.num_workers):
                c = counts[w]
                plan = self.slot(r, w, lay, items)
                outs = min(c * lay.batch_size, plan.real)
                sel = list(itertools.islice(output_order(plan.real, lay.shuffle_buffer, self.rng(r, w, self.phase)),
                                            outs))
                done.append(plan.positions[np.asarray(sel, dtype=np.int64)])
        consumed = np.unique(np.concatenate(done)) if done else np.zeros(0, np.int64)
        return np.setdiff1d(universe, consumed, assume_unique=False)

    def yielded_positions(self) -> np.ndarray:
        """The positions the whole phase yields across all ranks (no padding, no dropped tail)."""
        lay = self.layout
        if self.items is None:
            n = self.seq.total
            if self.mode == "eval":
                return np.arange(n, dtype=np.int64)
            return np.arange(self.batches * lay.batch_size * lay.world_size, dtype=np.int64) % n
        if self.mode == "eval":
            return self.items
        return self.items[: self.batches * lay.batch_size * lay.world_size]

    def class_counts(self, labels: np.ndarray, shard_samples: list[int], n_classes: int) -> np.ndarray:
        """Per-class samples (or positives, for multi-hot ``labels [N, C]``) the phase yields.

        Args:
            labels: class index (``[N]``) or multi-hot target (``[N, C]``) of every sample
                of the split, in shard order.
            shard_samples: samples per shard, in manifest order.
            n_classes: C.
        """
        shard, idx = self.seq.locate(self.yielded_positions())
        starts = np.concatenate([[0], np.cumsum(shard_samples)]).astype(np.int64)
        picked = labels[starts[shard] + idx]
        return picked.sum(axis=0) if picked.ndim == 2 else np.bincount(picked, minlength=n_classes)
