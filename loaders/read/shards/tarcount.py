"""How many samples a shard holds, from its tar headers alone (checked before any is yielded).

A manifest claiming fewer samples than a shard holds would make the loader silently drop the
rest; one claiming more would end the shard early. :func:`check_samples` counts them once,
with the shard's checksum: :class:`SampleCounter` walks the headers of a plain ustar tar (as
shardgen writes it) about 1 µs per member, fed with the blocks a hashing pass reads anyway;
a tar holding anything else (PAX or GNU headers, long names, a cut) is counted by
:class:`~shardgen.format.TarReader` instead, which also names what is wrong with it.
"""

from __future__ import annotations

from typing import Callable

from shardgen.format import TarReader

from ...errors import LoaderError

__all__ = ["SampleCounter", "count_samples", "check_samples"]

_ZERO = bytes(512)
ReadAt = Callable[[int, int], bytes]


class SampleCounter:
    """Samples of a plain ustar tar of ``size`` bytes: consecutive members sharing a key
    (the name up to its first dot) are one sample.

    Feed it the tar's blocks in order (:meth:`feed`), then :meth:`finish`; :attr:`result`
    is the count, or None when the tar is not plain ustar (then count another way).
    """

    def __init__(self, size: int):
        self.size, self.next, self.n, self.last = size, 0, 0, None
        self.result: int | None = None
        self.done = False

    def _step(self, h: bytes) -> None:
        """One header at :attr:`next`."""
        if len(h) < 512 or h[156] not in (0x30, 0) or h[345] != 0:
            self.done = True  # short, not a regular file, or a ustar prefix: not ours to count
            return
        if h == _ZERO:
            self.result, self.done = self.n, True
            return
        try:
            raw = h[124:136].split(b"\0", 1)[0].strip()
            member = int(raw, 8) if raw else 0
        except ValueError:
            self.done = True
            return
        key = h[0:100].split(b"\0", 1)[0].split(b".", 1)[0]
        if key != self.last:
            self.n, self.last = self.n + 1, key
        self.next += 512 + (member + 511) // 512 * 512

    def feed(self, block, start: int, read_at: ReadAt) -> None:
        """Headers that start in ``block`` (the tar's bytes from offset ``start``); a header
        that runs past the block is read with ``read_at(offset, 512)``."""
        end = start + len(block)
        while not self.done and self.next < end:
            off = self.next - start
            h = bytes(block[off:off + 512]) if off >= 0 and off + 512 <= len(block) else read_at(self.next, 512)
            self._step(h)

    def finish(self, read_at: ReadAt) -> int | None:
        """The count (reading any headers not fed yet with ``read_at``), or None."""
        while not self.done and self.next + 512 <= self.size:
            self._step(read_at(self.next, 512))
        self.done = True
        return self.result


def count_samples(read_at: ReadAt, size: int) -> int | None:
    """:class:`SampleCounter`'s count of a tar read with ``read_at(offset, n)``."""
    return SampleCounter(size).finish(read_at)


class _At:
    """A stream over ``read_at`` (for TarReader)."""

    def __init__(self, read_at: ReadAt, size: int):
        self.read_at, self.size, self.pos = read_at, size, 0

    def read(self, n: int) -> bytes:
        data = self.read_at(self.pos, max(0, min(n, self.size - self.pos)))
        self.pos += len(data)
        return data

    def skip(self, n: int) -> None:
        self.pos = min(self.size, self.pos + n)


def check_samples(read_at: ReadAt, shard, name: str, limit: int, counted: int | None = None) -> None:
    """Raise unless the shard's bytes (``read_at(offset, n)``) hold exactly ``shard.samples``
    samples (``counted``: a :class:`SampleCounter` result already at hand).

    Raises:
        LoaderError: another count. ShardReadError: the tar is damaged.
    """
    n = counted if counted is not None else count_samples(read_at, shard.bytes)
    if n is None:
        n = TarReader(_At(read_at, shard.bytes), want=(), limit=limit).skip_samples(shard.samples + 1)
    if n < shard.samples:
        raise LoaderError(f"{name}: holds fewer samples ({n}) than the manifest's {shard.samples}; "
                          "none of its samples was used")
    if n > shard.samples:
        raise LoaderError(f"{name}: holds more samples ({n}) than the manifest's {shard.samples}, which would "
                          "drop the rest; none of its samples was used")
