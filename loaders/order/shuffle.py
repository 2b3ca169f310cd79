"""Seeds and the shuffle buffer: the order in which a slot yields its items.

Every random choice of a loader comes from a seed made of integers (the loader's seed,
the epoch, the rank, the worker...) by :func:`slot_seed`, so it is the same on every
run and platform. The shuffle buffer's order is a function of the number of items, the
buffer size and the generator only (:func:`output_order`), so it is known before any
sample is read: a resumed slot passes over what it already yielded without reading it.
"""

from __future__ import annotations

import random
from typing import Iterator

import numpy as np

__all__ = ["slot_seed", "slot_rng", "shuffled", "output_order"]


def slot_seed(*parts: int) -> int:
    """A 64-bit seed from integers (stable across runs and platforms)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0])


def slot_rng(seed: int, epoch: int, rank: int, worker: int, phase: int) -> random.Random:
    """The shuffle-buffer generator of one slot in one phase of an epoch."""
    parts = (seed, epoch, rank, worker, 1) if phase == 0 else (seed, epoch, rank, worker, 1, phase)
    return random.Random(slot_seed(*parts))


def shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """Shuffle a stream through a buffer of ``size`` items."""
    if size <= 1:
        yield from items
        return
    buf: list = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = x
    rng.shuffle(buf)
    yield from buf


def output_order(n: int, shuffle_buffer: int | None, rng: random.Random | None):
    """The order (an iterator of item numbers ``0..n-1``) in which a slot yields its items:
    item order in eval, the shuffle buffer's order in train (a function of ``n``, the
    buffer size and the generator only, so it is known before any sample is read)."""
    if rng is None:
        return iter(range(n))
    return shuffled(iter(range(n)), shuffle_buffer or 0, rng)
