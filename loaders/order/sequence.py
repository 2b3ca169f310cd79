"""An epoch as a sequence of sample positions, and the class balance that shapes it.

An epoch visits *units* in an order: without balance a unit is a whole shard and the
order is :func:`loaders.order.plan.shard_order`; with ``balance`` a unit is one pass over a
shard that keeps only some of its samples (see :func:`balanced_units`). Position ``p``
of the epoch is the ``p``-th sample of the concatenated units. Ranks and workers take
slices of the positions (:mod:`loaders.order.plan`); resuming on another layout takes the
positions not yet yielded (:mod:`loaders.order.resume`). Everything here depends only on the
manifest, the labels, the seed and the epoch, so every process computes the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from typing import Sequence as Seq

import numpy as np

from ..errors import UsageError

__all__ = ["Unit", "EpochSequence", "Segment", "check_balance", "class_targets", "multiplicities",
           "balanced_units"]


@dataclass(frozen=True)
class Segment:
    """Samples of shard number ``shard`` (manifest index), read in stored order.

    ``take``: the sample indices read (ascending, within ``start .. stop-1``); None: all
    of ``start .. stop-1``.
    """

    shard: int
    start: int
    stop: int
    take: tuple[int, ...] | None = None

    @property
    def count(self) -> int:
        return self.stop - self.start if self.take is None else len(self.take)

    def indices(self) -> Seq[int]:
        """The sample indices read, in order."""
        return range(self.start, self.stop) if self.take is None else self.take


@dataclass(frozen=True, eq=False)
class Unit:
    """A run of an epoch: samples ``take`` (ascending indices; None: all) of shard ``shard``."""

    shard: int
    count: int
    take: np.ndarray | None = None


class EpochSequence:
    """The positions of one epoch: ``units`` in visiting order, concatenated."""

    def __init__(self, units: list[Unit]):
        self.units = [u for u in units if u.count > 0]
        self.cum = np.concatenate([[0], np.cumsum([u.count for u in self.units], dtype=np.int64)])

    @property
    def total(self) -> int:
        return int(self.cum[-1])

    def locate(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(shard, sample index)`` arrays of ``positions``."""
        k = np.searchsorted(self.cum, positions, side="right") - 1
        off = positions - self.cum[k]
        shards = np.asarray([u.shard for u in self.units], dtype=np.int64)[k]
        idx = off.copy()
        for i in np.unique(k):
            take = self.units[i].take
            if take is not None:
                sel = k == i
                idx[sel] = take[off[sel]]
        return shards, idx

    def segments(self, positions: np.ndarray) -> list[Segment]:
        """The reads that give ``positions`` in that order (each run of one unit with rising
        offsets becomes one segment)."""
        if len(positions) == 0:
            return []
        k = np.searchsorted(self.cum, positions, side="right") - 1
        off = positions - self.cum[k]
        # One segment per run of one unit read forwards (gaps are skipped within one open
        # shard, never by opening it again).
        cut = np.flatnonzero((np.diff(k) != 0) | (np.diff(off) <= 0)) + 1
        out: list[Segment] = []
        for a, b in zip(np.concatenate([[0], cut]), np.concatenate([cut, [len(positions)]])):
            unit, o = self.units[int(k[a])], off[a:b]
            if unit.take is None and o[-1] - o[0] + 1 == len(o):
                out.append(Segment(unit.shard, int(o[0]), int(o[-1]) + 1))
            else:
                t = o if unit.take is None else unit.take[o]
                out.append(Segment(unit.shard, int(t[0]), int(t[-1]) + 1, tuple(int(x) for x in t)))
        return out


def check_balance(balance: Any, classes: Seq[str]) -> Any:
    """Validate ``balance``: None, ``"class"`` or ``{class name: weight >= 0}`` naming every class.

    Returns:
        A JSON-serialisable normal form (None, ``"class"`` or a dict in class order).

    Raises:
        UsageError: anything else, with the reason.
    """
    if balance is None or balance == "class":
        return balance
    if not isinstance(balance, dict):
        raise UsageError(f"balance must be None, 'class' or a dict of class weights, got {balance!r}")
    names = {str(c) for c in classes}
    unknown = sorted(str(k) for k in balance if str(k) not in names)
    if unknown:
        raise UsageError(f"balance names unknown class(es) {', '.join(unknown)} (classes: {', '.join(classes)})")
    missing = [c for c in classes if c not in {str(k) for k in balance}]
    if missing:
        raise UsageError(f"balance has no weight for class(es) {', '.join(missing)}")
    out = {}
    for c in classes:
        w = next(v for k, v in balance.items() if str(k) == c)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
            raise UsageError(f"balance weight of class {c!r} must be a number >= 0, got {w!r}")
        out[c] = float(w)
    if sum(out.values()) <= 0:
        raise UsageError("balance weights are all zero")
    return out


def class_targets(counts: np.ndarray, balance: Any, total: int) -> np.ndarray:
    """Samples of each class in a balanced epoch of ``total`` samples.

    ``"class"``: every class that has samples gets an equal share; a dict: shares
    proportional to the weights. Shares are rounded by largest remainder (ties to the
    lower class index), so the targets sum to the split's size.

    Raises:
        UsageError: a class with a positive weight has no samples.
    """
    n = int(total)
    if balance == "class":
        weights = (counts > 0).astype(np.float64)
    else:
        weights = np.asarray(list(balance.values()), dtype=np.float64)
        empty = [i for i in range(len(counts)) if weights[i] > 0 and counts[i] == 0]
        if empty:
            raise UsageError(f"balance gives class number {empty[0]} a weight but the split has none of it")
    share = n * weights / weights.sum()
    out = np.floor(share).astype(np.int64)
    order = sorted(range(len(counts)), key=lambda i: (-(share[i] - out[i]), i))
    for i in order[: n - int(out.sum())]:
        out[i] += 1
    return out


def multiplicities(labels: np.ndarray, targets: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """How often each sample (split order) appears in a balanced epoch.

    Class ``c`` (``n_c`` samples, target ``T_c``) repeats every sample ``T_c // n_c``
    times and one more time for ``T_c % n_c`` of them, chosen by a generator seeded with
    ``(seed, epoch, c)``; so class ``c`` contributes exactly ``T_c`` samples.
    """
    m = np.zeros(len(labels), dtype=np.int64)
    for c, target in enumerate(targets):
        members = np.flatnonzero(labels == c)
        if len(members) == 0:
            continue
        base, extra = divmod(int(target), len(members))
        m[members] = base
        if extra:
            rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFFFFFF, c, 0xBA1A])
            m[members[rng.choice(len(members), extra, replace=False)]] += 1
    return m


def balanced_units(counts: Seq[int], m: np.ndarray, seed: int, epoch: int) -> list[Unit]:
    """The units of a balanced epoch: pass ``p`` over shard ``s`` keeps the samples that
    appear more than ``p`` times; all ``(pass, shard)`` units in an order shuffled by
    ``(seed, epoch)``. A sample's repeats are so in different units, far apart."""
    units: list[Unit] = []
    start = 0
    for s, n in enumerate(counts):
        ms = m[start:start + n]
        for p in range(int(ms.max(initial=0))):
            take = np.flatnonzero(ms > p)
            units.append(Unit(s, len(take), None if len(take) == n else take))
        start += n
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFFFFFF, 0xBA1B])
    return [units[i] for i in rng.permutation(len(units))]
