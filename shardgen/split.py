"""Seeded, stratified, duplicate- and group-aware assignment of samples to splits.

Samples that must stay together (exact pixel duplicates, the same ``--group`` value)
are joined into components with a union-find. Each component belongs to the class of
its first member; per class, components are ordered by a seeded hash of their first
member's path (so file-system listing order never matters) and each goes to the split
that is furthest below its target count. With singletons the counts are exact to
within one sample per split and class.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import xxhash

__all__ = ["UnionFind", "assign_splits", "shuffle_order", "largest_remainder"]


class UnionFind:
    """Plain union-find over ``range(n)`` with path halving."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        p = self.parent
        while p[a] != a:
            p[a] = p[p[a]]
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


def largest_remainder(n: int, ratios: Sequence[float]) -> list[int]:
    """Split ``n`` into integer parts proportional to ``ratios`` (sum = n)."""
    raw = [n * r for r in ratios]
    base = [int(x) for x in raw]
    rest = n - sum(base)
    order = sorted(range(len(ratios)), key=lambda i: (-(raw[i] - base[i]), i))
    for i in order[:rest]:
        base[i] += 1
    return base


def assign_splits(
    relpaths: Sequence[str],
    labels: Sequence[int],
    together: Sequence[Sequence[int]],
    ratios: Sequence[tuple[str, float]],
    seed: int,
) -> list[str]:
    """Assign each sample to a split.

    Args:
        relpaths: source path of each sample (sorted order is not required).
        labels: class index of each sample.
        together: groups of sample indices that must share a split.
        ratios: ``[(split, ratio), ...]`` summing to 1.
        seed: seed of the assignment.

    Returns:
        The split name of each sample.
    """
    n = len(relpaths)
    uf = UnionFind(n)
    for grp in together:
        for a, b in zip(grp, grp[1:]):
            uf.union(a, b)
    members: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        members[uf.find(i)].append(i)
    comps_by_class: dict[int, list[tuple[int, str, list[int]]]] = defaultdict(list)
    for ms in members.values():
        first = min(ms, key=lambda i: relpaths[i])
        comps_by_class[labels[first]].append((_h(seed, "split", relpaths[first]), relpaths[first], ms))
    names = [s for s, _ in ratios]
    weights = [r for _, r in ratios]
    out = [""] * n
    for cls in sorted(comps_by_class):
        comps = sorted(comps_by_class[cls])
        total = sum(len(c[2]) for c in comps)
        target = largest_remainder(total, weights)
        have = [0] * len(names)
        for _, _, ms in comps:
            # Largest deficit first; ties go to the split named first.
            j = max(range(len(names)), key=lambda k: (target[k] - have[k], -k))
            have[j] += len(ms)
            for i in ms:
                out[i] = names[j]
    return out


def shuffle_order(keys: Sequence[str], seed: int, split: str) -> list[int]:
    """A seeded permutation of ``keys`` that does not depend on their input order."""
    return sorted(range(len(keys)), key=lambda i: (_h(seed, "shuffle", split, keys[i]), keys[i]))
