"""Seeded, stratified, duplicate- and group-aware assignment of samples to splits.

Samples that must stay together (exact pixel duplicates, the same ``--group`` value)
are joined into components with a union-find. Each component belongs to the class of
its first member (smallest path).

The rule (N usable samples, class ``c`` with ``n_c`` of them, ratio ``r_j`` of split ``j``;
all arithmetic exact, on the ratios as written, normalised to sum 1):

1. Global targets: ``T = largest_remainder(N, r)``, so each split's total is within
   one sample of ``r_j * N`` (remainders go to the largest fractional parts, ties to
   the split listed first).
2. Every class gets ``floor(r_j * n_c)`` in each split; its leftover
   ``n_c - sum_j floor(r_j * n_c)`` samples (fewer than the number of splits) go one
   per split. Classes take their leftovers in a seeded order (``xxh64`` of seed and
   class index), each to the splits that are furthest below their global target,
   counting what the classes before it got and the floors of those after it; ties go
   to the larger fractional part ``r_j * n_c - floor``, then to the split listed first.
   So each class stays within one sample of ``r_j * n_c`` in every split (stratified),
   and the split totals add up to ``T`` exactly.
3. Within a class, components go largest first, then in seeded-hash order of their
   first path, each to the split with the largest remaining need for that class (ties:
   the split listed first).

With singletons (no duplicates, no groups) both guarantees hold exactly. A component
cannot be divided, so with duplicates or groups the class counts can overshoot; step 2
sees the actual counts of the classes before, so later classes make up for it and the
totals stay as close as the components allow. Nothing depends on listing order or on
the worker count: only the seed, the class indices and the paths decide. A split can
still be empty (2 images, three splits); :func:`empty_split_notes` says so.
"""

from __future__ import annotations

from fractions import Fraction
from typing import Mapping, Sequence

import numpy as np
import xxhash

from ..sources.columns import ties_sorted

__all__ = ["UnionFind", "assign_split_indices", "component_ids", "Components", "empty_split_notes",
           "shuffle_order", "largest_remainder"]


class UnionFind:
    """Plain union-find over ``range(n)`` with path halving."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parent: dict[int, int] = {}  # only the items ever joined: memory follows the unions

    def find(self, a: int) -> int:
        p = self.parent
        while p.get(a, a) != a:
            p[a] = p.get(p[a], p[a])
            a = p[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra


def _h(seed: int, *parts: str) -> int:
    return xxhash.xxh64_intdigest("\x00".join(parts).encode("utf-8", "surrogateescape"), seed=seed & 0xFFFFFFFFFFFFFFFF)


def exact_weights(ratios: Sequence[float]) -> list[Fraction]:
    """The ratios as written (``0.15`` is 15/100), normalised to sum exactly 1."""
    fr = [Fraction(str(r)) for r in ratios]
    total = sum(fr)
    return [f / total for f in fr] if total else fr


def largest_remainder(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` into integer parts proportional to ``ratios`` (sum = n).

    Each part is ``floor(n * ratio)`` or one more; the leftover units go to the largest
    fractional parts, ties to the earlier ratio. Exact arithmetic.
    """
    raw = [n * w for w in exact_weights(ratios)]
    base = [int(x) for x in raw]  # floor: raw >= 0
    rest = n - sum(base)
    order = sorted(range(len(ratios)), key=lambda i: (-(raw[i] - base[i]), i))
    for i in order[:rest]:
        base[i] += 1
    return base


def component_ids(n: int, together: Sequence[Sequence[int]] = (), groups: np.ndarray | None = None) -> np.ndarray:
    """A component number per sample of ``0..n-1`` (int64; the smallest member's index):
    samples listed in one group of ``together``, or with the same non-negative ``groups``
    code, share one. Arrays throughout; a Python union-find only over ``together``."""
    comp = np.arange(n, dtype=np.int64)
    if groups is not None and n:
        has = np.flatnonzero(groups >= 0)
        codes = groups[has]
        first = np.full(int(codes.max()) + 1 if len(codes) else 0, n, dtype=np.int64)
        np.minimum.at(first, codes, has)  # each code's smallest sample (no np.unique: less memory)
        comp[has] = first[codes]
    if together:
        uf = UnionFind(n)
        for grp in together:
            for a, b in zip(grp, grp[1:]):
                uf.union(int(comp[a]), int(comp[b]))
        ids = np.fromiter(uf.parent.keys(), np.int64, len(uf.parent))
        if len(ids):
            roots = np.fromiter((uf.find(int(i)) for i in ids), np.int64, len(ids))
            order = np.argsort(ids)
            ids, roots = ids[order], roots[order]
            pos = np.searchsorted(ids, comp).clip(0, len(ids) - 1)
            hit = ids[pos] == comp
            comp[hit] = roots[pos[hit]]
    return comp


def _path_ranks(relpaths: Sequence[str]) -> np.ndarray | None:
    """Each path's rank in sorted order (int64), or None when they are sorted already."""
    prev = None
    for i, rel in enumerate(relpaths):
        if prev is not None and rel < prev:
            order = np.asarray(sorted(range(len(relpaths)), key=relpaths.__getitem__), dtype=np.int64)
            ranks = np.empty_like(order)
            ranks[order] = np.arange(len(order))
            return ranks
        prev = rel
    return None


def _dense(comp: np.ndarray, ix) -> tuple[np.ndarray, np.ndarray]:
    """``(each sample's component number, each component's size)``, numbered in ascending
    order of ``comp``'s values, as ``np.unique(comp, return_inverse=True,
    return_counts=True)`` gives them. When each value is its component's smallest member
    (as :func:`component_ids` gives), without sorting: a few arrays instead of many."""
    n = len(comp)
    at = np.arange(n, dtype=np.int64)
    if n and bool((comp <= at).all()) and bool((comp[comp] == comp).all()):
        dense = np.cumsum(comp == at, dtype=np.int64) - 1
        del at
        inverse = dense[comp].astype(ix)
        return inverse, np.bincount(inverse, minlength=int(dense[-1]) + 1).astype(ix)
    _, inverse, size = np.unique(comp, return_inverse=True, return_counts=True)
    return inverse.astype(ix), size.astype(ix)


class Components:
    """The components of a split assignment as arrays, in placement order within each class
    (``labels`` None: one class): largest first, then by the seeded hash (``salt``) of the
    first path (smallest), then that path.

    Attributes:
        first: the first sample of each component (int64); ``size``, ``label`` alike.
    """

    def __init__(self, relpaths: Sequence[str], labels: Sequence[int] | None, comp: np.ndarray, seed: int,
                 salt: str = "split") -> None:
        n = len(relpaths)
        ix = np.int32 if n < 2**31 else np.int64  # 4 bytes per sample and component, not 8
        ranks = _path_ranks(relpaths)
        key = np.arange(n, dtype=ix) if ranks is None else ranks.astype(ix)
        inverse, size = _dense(comp, ix)
        best = np.full(len(size), n, dtype=ix)
        np.minimum.at(best, inverse, key)  # the smallest path's rank in each component
        del key
        first = best if ranks is None else np.argsort(ranks).astype(ix)[best]
        self.of_sample = inverse  # each sample's component number
        self._by_comp = np.argsort(inverse, kind="stable").astype(ix)  # samples grouped by component
        self._start = np.concatenate([[0], np.cumsum(size, dtype=np.int64)])
        label = (np.asarray(labels, dtype=np.int64)[first].astype(np.int32) if n and labels is not None
                 else np.zeros(len(first), np.int32))
        rank = np.fromiter((_h(seed, salt, relpaths[int(i)]) for i in first), np.uint64, len(first))
        order = np.lexsort((rank, -size, label))
        order = ties_sorted(order, [label, size, rank], lambda c: relpaths[int(first[c])]).astype(ix)
        self.first, self.size, self.label = first[order], size[order], label[order]
        self.number = order  # each component's number, for samples()

    def of_class(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(first, size, number)`` of class ``c``'s components, in placement order."""
        lo, hi = np.searchsorted(self.label, [c, c + 1])
        return self.first[lo:hi], self.size[lo:hi], self.number[lo:hi]

    def samples(self, number: int) -> np.ndarray:
        """The samples of component ``number`` (ascending)."""
        return self._by_comp[self._start[number]:self._start[number + 1]]


def _class_targets(n_c: int, w: list[Fraction], need: list[int]) -> list[int]:
    """Floors of ``n_c * w`` plus one for the leftover count of splits, chosen by ``need``."""
    share = [n_c * x for x in w]
    target = [int(x) for x in share]
    rest = n_c - sum(target)
    eligible = [j for j in range(len(w)) if w[j] > 0]
    pick = sorted(eligible, key=lambda j: (-need[j], -(share[j] - target[j]), j))[:rest]
    for j in pick:
        target[j] += 1
    return target


def assign_split_indices(relpaths: Sequence[str], labels: Sequence[int], together: Sequence[Sequence[int]],
                         ratios: Sequence[tuple[str, float]], seed: int,
                         groups: np.ndarray | None = None) -> np.ndarray:
    """Assign each sample to a split (the rule is in the module docstring).

    Args:
        relpaths: source path of each sample (sorted order is not required).
        labels: class index of each sample.
        together: groups of sample indices that must share a split.
        ratios: ``[(split, ratio), ...]`` summing to 1 (each in (0, 1]).
        seed: seed of the assignment.
        groups: an int code per sample (-1: none) that joins samples like ``together`` does,
            without lists.

    Returns:
        An int16 array of split indices (into ``ratios``); memory: a few arrays of 8 bytes per
        sample, no Python object per sample.
    """
    w = exact_weights([r for _, r in ratios])
    k = len(ratios)
    comps = Components(relpaths, labels, component_ids(len(relpaths), together, groups), seed)
    classes = sorted({int(c) for c in np.unique(comps.label)}, key=lambda c: (_h(seed, "class", str(c)), c))
    sizes = {c: int(comps.of_class(c)[1].sum()) for c in classes}
    goal = largest_remainder(len(relpaths), [r for _, r in ratios])
    floors = {c: [int(n * x) for x in w] for c, n in sizes.items()}
    pending = [sum(f[j] for f in floors.values()) for j in range(k)]  # floors of classes not yet placed
    placed = [0] * k
    out = np.full(len(relpaths), -1, dtype=np.int16)
    eligible = [j for j in range(k) if w[j] > 0]
    for c in classes:
        pending = [p - f for p, f in zip(pending, floors[c])]
        need = [goal[j] - placed[j] - pending[j] - floors[c][j] for j in range(k)]
        target = _class_targets(sizes[c], w, need)
        have = [0] * k
        first, size, number = comps.of_class(c)
        singles = int(np.searchsorted(-size, -1))  # components of one sample come last
        for comp, n in zip(number[:singles].tolist(), size[:singles].tolist()):
            j = max(eligible, key=lambda j: (target[j] - have[j], -j))
            have[j] += n
            out[comps.samples(comp)] = j
        picks = _greedy_singles([target[j] - have[j] for j in range(k)], eligible, len(first) - singles)
        out[first[singles:]] = picks
        have = [h + int(np.count_nonzero(picks == j)) for j, h in enumerate(have)]
        placed = [p + h for p, h in zip(placed, have)]
    return out


def _greedy_singles(rem: list[int], eligible: list[int], m: int) -> np.ndarray:
    """The splits ``m`` one-sample components go to, one by one, each to the eligible split
    with the largest remaining need ``rem`` (ties: the split listed first), ``rem`` falling
    by one at each pick: in rounds over the splits at the top level, without a loop per sample."""
    rem = list(rem)
    out: list[np.ndarray] = []
    left = m
    while left > 0:
        top = max(rem[j] for j in eligible)
        level = [j for j in eligible if rem[j] == top]
        below = [rem[j] for j in eligible if rem[j] < top]
        rounds = top - max(below) if below else -(-left // len(level))
        picks = np.tile(np.asarray(level, dtype=np.int16), rounds)[:left]
        out.append(picks)
        left -= len(picks)
        for j in level:
            rem[j] -= int(np.count_nonzero(picks == j))
    return np.concatenate(out) if out else np.zeros(0, np.int16)


def empty_split_notes(ratios: Sequence[tuple[str, float]], samples: Mapping[str, int]) -> list[str]:
    """One note per split with a non-zero ratio and no samples, saying why.

    Args:
        ratios: ``[(split, ratio), ...]`` as given to :func:`assign_split_indices`.
        samples: samples per split in the finished build.
    """
    n = sum(samples.values())
    goal = dict(zip([s for s, _ in ratios], largest_remainder(n, [r for _, r in ratios])))
    notes = []
    for name, r in ratios:
        if r > 0 and not samples.get(name):
            if goal[name] == 0:
                why = (f"{r:g} of {n} usable image(s) is {r * n:.2g}, which rounds to 0; "
                       f"use fewer splits or more images")
            else:
                why = (f"its target was {goal[name]} of {n}, but duplicates or --group members "
                       f"that must share a split left none for it")
            notes.append(f"split {name} is empty (ratio {r:g}): {why}")
    return notes


def shuffle_order(keys: Sequence[str], seed: int, split: str) -> np.ndarray:
    """A seeded permutation of ``keys`` that does not depend on their input order: sorted by
    the xxh64 of seed, split and key, then by key (an int64 array)."""
    rank = np.fromiter((_h(seed, "shuffle", split, k) for k in keys), np.uint64, len(keys))
    order = np.argsort(rank, kind="stable")
    return ties_sorted(order, [rank], lambda i: keys[int(i)])
