"""Seeded iterative stratification of multi-label samples into splits, groups kept whole.

The rule is Sechidis, Tsoumakas and Vlahavas' iterative stratification ("On the
stratification of multi-label data", ECML PKDD 2011), applied to components instead of
single samples: samples that must stay together (exact pixel duplicates, the same group,
e.g. one patient) are joined with a union-find first, and a component carries the
positive counts of all its members.

1. Desired counts: split ``j`` (ratio ``r_j``) should get ``r_j * N`` samples and, for
   each class ``l`` with ``n_l`` positive samples, ``r_j * n_l`` positives of ``l``.
2. Repeatedly take the class with the fewest positives still unplaced (ties: the lower
   class index) and place every unplaced component holding it, largest first, then in
   seeded-hash order of its first path: each goes to the split that most wants that
   class (largest remaining desired count; ties: the largest remaining desired total,
   then the split listed first). Placing a component lowers the desired counts of every
   class it holds and the split's desired total.
3. Components without any positive (only ``--no_finding`` images) go last, largest first
   then in seeded order, each to the split with the largest remaining desired total.

Rare classes are placed first, while every split still wants them, which is what keeps
their proportions close; the totals stay close to the ratios because each placement
also lowers the split's desired total. Nothing depends on listing order or worker
count: only the seed, the labels, the groups and the paths decide.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from .split import Components, exact_weights, component_ids

__all__ = ["assign_multilabel_indices", "positive_rates"]


class _Held:
    """Each component's positives per class (CSR arrays), and the components holding each class."""

    def __init__(self, comps: Components, label_sets: Sequence[Sequence[int]], codes: np.ndarray,
                 n_classes: int) -> None:
        ptr, cls, cnt = [0], [], []
        for number, first, size in zip(comps.number.tolist(), comps.first.tolist(), comps.size.tolist()):
            if size == 1:
                counts = dict.fromkeys(label_sets[codes[first]], 1)
            else:
                counts = Counter(c for i in comps.samples(number).tolist() for c in label_sets[codes[i]])
            cls.extend(counts)
            cnt.extend(counts.values())
            ptr.append(len(cls))
        self.ptr, self.cls, self.cnt = ptr, cls, cnt
        pos = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
        cls_arr = np.asarray(cls, dtype=np.int64)
        order = np.lexsort((pos, cls_arr))
        self._by_class, self._cls_sorted = pos[order], cls_arr[order]
        self.n_classes = n_classes

    def counts(self, p: int) -> zip:
        """``(class, positives)`` pairs of the component at placement position ``p``."""
        return zip(self.cls[self.ptr[p]:self.ptr[p + 1]], self.cnt[self.ptr[p]:self.ptr[p + 1]])

    def holding(self, c: int) -> list[int]:
        """Placement positions of the components holding class ``c``, in order."""
        lo, hi = np.searchsorted(self._cls_sorted, [c, c + 1])
        return self._by_class[lo:hi].tolist()


def assign_multilabel_indices(relpaths: Sequence[str], label_sets: Sequence[Sequence[int]], codes: np.ndarray,
                              n_classes: int, together: Sequence[Sequence[int]], ratios: Sequence[tuple[str, float]],
                              seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Assign each sample to a split (the rule is in the module docstring).

    Args:
        relpaths: source path of each sample.
        label_sets: the distinct label sets (class indices; empty: no positive class).
        codes: each sample's label set, an index into ``label_sets``.
        n_classes: C.
        together: groups of sample indices that must share a split.
        ratios: ``[(split, ratio), ...]`` summing to 1.
        seed: seed of the assignment.
        groups: an int code per sample (-1: none) that joins samples as ``together`` does.

    Returns:
        An int16 array of split indices (into ``ratios``); no Python object per sample.
    """
    w = [float(x) for x in exact_weights([r for _, r in ratios])]
    k = len(ratios)
    comps = Components(relpaths, None, component_ids(len(relpaths), together, groups), seed, salt="mlsplit")
    held = _Held(comps, label_sets, codes, n_classes)
    per_set = np.bincount(codes, minlength=len(label_sets))
    positives = Counter()
    for ls, n in zip(label_sets, per_set.tolist()):
        for c in ls:
            positives[c] += n
    want_total = [x * len(relpaths) for x in w]
    want = [[x * positives[c] for x in w] for c in range(n_classes)]
    remaining = [positives[c] for c in range(n_classes)]
    where = np.full(len(comps.first), -1, dtype=np.int16)  # placement position -> split index
    open_splits = [j for j in range(k) if w[j] > 0]

    def place(p: int, j: int) -> None:
        where[p] = j
        want_total[j] -= int(comps.size[p])
        for c, n in held.counts(p):
            want[c][j] -= n
            remaining[c] -= n

    while True:
        live = [c for c in range(n_classes) if remaining[c] > 0]
        if not live:
            break
        c = min(live, key=lambda x: (remaining[x], x))
        for p in held.holding(c):
            if where[p] < 0:
                place(p, max(open_splits, key=lambda j: (want[c][j], want_total[j], -j)))
    for p in np.flatnonzero(where < 0).tolist():
        place(p, max(open_splits, key=lambda j: (want_total[j], -j)))
    by_number = np.empty_like(where)
    by_number[comps.number] = where
    return by_number[comps.of_sample]


def positive_rates(counts: dict[str, int], samples: int) -> dict[str, float]:
    """Positive rate of each class in a split (positives / samples, 4 decimals; 0 when empty)."""
    return {c: round(n / samples, 4) if samples else 0.0 for c, n in counts.items()}
