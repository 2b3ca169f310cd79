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

from collections import Counter, defaultdict
from typing import Sequence

from .split import _exact, _h, joined

__all__ = ["assign_multilabel", "positive_rates"]


class _Comp:
    __slots__ = ("members", "size", "counts", "order")

    def __init__(self, members: list[int], counts: Counter, order: tuple) -> None:
        self.members, self.size, self.counts, self.order = members, len(members), counts, order


def _components(relpaths: Sequence[str], labels: Sequence[Sequence[int]], together: Sequence[Sequence[int]],
                seed: int) -> list[_Comp]:
    members = joined(len(relpaths), together)
    comps = []
    for ms in members.values():
        first = min(relpaths[i] for i in ms)
        counts = Counter(c for i in ms for c in labels[i])
        comps.append(_Comp(ms, counts, (-len(ms), _h(seed, "mlsplit", first), first)))
    comps.sort(key=lambda c: c.order)
    return comps


def assign_multilabel(relpaths: Sequence[str], labels: Sequence[Sequence[int]], n_classes: int,
                      together: Sequence[Sequence[int]], ratios: Sequence[tuple[str, float]],
                      seed: int) -> list[str]:
    """Assign each sample to a split (the rule is in the module docstring).

    Args:
        relpaths: source path of each sample.
        labels: the class indices of each sample (empty: no positive class).
        n_classes: C.
        together: groups of sample indices that must share a split.
        ratios: ``[(split, ratio), ...]`` summing to 1.
        seed: seed of the assignment.

    Returns:
        The split name of each sample.
    """
    names = [s for s, _ in ratios]
    w = [float(x) for x in _exact([r for _, r in ratios])]
    k = len(names)
    comps = _components(relpaths, labels, together, seed)
    positives = Counter(c for ls in labels for c in ls)
    want_total = [x * len(relpaths) for x in w]
    want = [[x * positives[c] for x in w] for c in range(n_classes)]
    remaining = [positives[c] for c in range(n_classes)]
    holding: dict[int, list[_Comp]] = defaultdict(list)
    for comp in comps:
        for c in comp.counts:
            holding[c].append(comp)
    where: dict[int, int] = {}  # id(comp) -> split index
    open_splits = [j for j in range(k) if w[j] > 0]

    def place(comp: _Comp, j: int) -> None:
        where[id(comp)] = j
        want_total[j] -= comp.size
        for c, n in comp.counts.items():
            want[c][j] -= n
            remaining[c] -= n

    while True:
        live = [c for c in range(n_classes) if remaining[c] > 0]
        if not live:
            break
        c = min(live, key=lambda x: (remaining[x], x))
        for comp in holding[c]:
            if id(comp) not in where:
                place(comp, max(open_splits, key=lambda j: (want[c][j], want_total[j], -j)))
    for comp in comps:
        if id(comp) not in where:
            place(comp, max(open_splits, key=lambda j: (want_total[j], -j)))
    out = [""] * len(relpaths)
    for comp in comps:
        for i in comp.members:
            out[i] = names[where[id(comp)]]
    return out


def positive_rates(counts: dict[str, int], samples: int) -> dict[str, float]:
    """Positive rate of each class in a split (positives / samples, 4 decimals; 0 when empty)."""
    return {c: round(n / samples, 4) if samples else 0.0 for c, n in counts.items()}
