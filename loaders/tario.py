"""A small streaming tar reader that groups members into samples.

It reads ustar/GNU/pax headers from any object with ``read(n)`` and ``skip(n)``
(see :mod:`loaders.sources`), never seeks backwards, and only reads the member data
the caller wants: skipped samples and unwanted members (``.json``) cost a header read
and a skip, which is a seek for local files.
"""

from __future__ import annotations

from typing import Iterator

from .errors import LoaderError

__all__ = ["TarSamples", "Sample", "find_sample_headers"]

BLOCK = 512


def _octal(field: bytes) -> int:
    if field[0] & 0x80:  # GNU base-256 for big numbers
        n = field[0] & 0x3F
        for b in field[1:]:
            n = (n << 8) | b
        return n
    s = field.split(b"\0", 1)[0].strip()
    try:
        return int(s, 8) if s else 0
    except ValueError:
        raise LoaderError(f"bad number {field!r} in a tar header") from None


def _checksum_ok(h: bytes) -> bool:
    field = h[148:156]
    try:
        want = int(field.split(b"\0", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    return want == sum(h) - sum(field) + 256  # the field counts as 8 spaces


def _padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


class Sample:
    """One sample: its key and the member data that was asked for (``{ext: bytes}``)."""

    __slots__ = ("key", "parts")

    def __init__(self, key: str, parts: dict[str, bytes]):
        self.key = key
        self.parts = parts


class TarSamples:
    """Iterate over the samples of one shard.

    Args:
        stream: object with ``read(n) -> bytes`` and ``skip(n)``.
        name: the shard's name for messages.
        want: member extensions whose data is read (others are skipped).
    """

    def __init__(self, stream, name: str, want: tuple[str, ...] = ("png", "cls")):
        self.stream = stream
        self.name = name
        self.want = frozenset(want)
        self.offset = 0
        self.index = 0  # samples of the shard passed so far
        self._peek: tuple[str, str, int] | None = None
        self._done = False

    def restart_at(self, offset: int, index: int) -> None:
        """The stream now stands at byte ``offset``, the header of sample ``index``."""
        self.offset, self.index = offset, index
        self._peek, self._done = None, False

    # -- members -----------------------------------------------------------------
    def _read_exact(self, n: int, what: str) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise LoaderError(f"{self.name}: truncated tar at byte {self.offset + len(data)} "
                              f"(in {what}); the shard is shorter than its header says")
        self.offset += n
        return data

    def _skip(self, n: int) -> None:
        if n:
            self.stream.skip(n)
            self.offset += n

    def _next_header(self) -> tuple[str, str, int] | None:
        """Next regular member as ``(key, ext, size)``; data not yet consumed."""
        long_name: str | None = None
        read = self.stream.read
        while True:
            if self._done:
                return None
            at = self.offset
            h = read(BLOCK)
            if len(h) != BLOCK:
                if not h:
                    self._done = True
                    return None
                raise LoaderError(f"{self.name}: truncated tar header at byte {at}")
            self.offset += BLOCK
            if not _checksum_ok(h):
                if h.count(0) == BLOCK:  # end-of-archive marker
                    self._done = True
                    return None
                raise LoaderError(f"{self.name}: corrupt tar header at byte {at} (bad checksum)")
            size = _octal(h[124:136])
            typeflag = h[156]
            if typeflag in (0x4C, 0x78, 0x67):  # L (GNU long name), x (pax), g (pax global)
                data = self._read_exact(size, "extended header")
                self._skip(_padded(size) - size)
                if typeflag == 0x4C:
                    long_name = data.rstrip(b"\0").decode("utf-8", "replace")
                elif typeflag == 0x78:
                    for rec in _pax_records(data):
                        if rec[0] == "path":
                            long_name = rec[1]
                continue
            name = long_name
            if name is None:
                name = h[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
                if h[345] and h[257:262] == b"ustar":
                    name = h[345:500].split(b"\0", 1)[0].decode("utf-8", "replace") + "/" + name
            long_name = None
            if typeflag not in (0x30, 0, 0x37):  # not a regular file: directories, links, ...
                self._skip(_padded(size))
                continue
            base = name.rsplit("/", 1)[-1]
            key, dot, ext = base.partition(".")
            if not dot or not key:
                raise LoaderError(f"{self.name}: member {name!r} at byte {at} is not <key>.<ext>")
            return key, ext, size

    def _take(self, size: int, want: bool, what: str) -> bytes | None:
        if want:
            data = self._read_exact(size, what)
            self._skip(_padded(size) - size)
            return data
        self._skip(_padded(size))
        return None

    # -- samples -----------------------------------------------------------------
    def _sample(self, read: bool) -> Sample | None:
        head = self._peek or self._next_header()
        self._peek = None
        if head is None:
            return None
        key = head[0]
        parts: dict[str, bytes] = {}
        while head is not None and head[0] == key:
            _, ext, size = head
            if ext in parts:
                raise LoaderError(f"{self.name}: sample {key}: duplicate member .{ext}")
            data = self._take(size, read and ext in self.want, f"{key}.{ext}")
            parts[ext] = data if data is not None else b""
            head = self._next_header()
        self._peek = head
        self.index += 1
        return Sample(key, parts)

    def skip_samples(self, n: int) -> int:
        """Skip ``n`` samples without reading their data; returns how many were skipped."""
        done = 0
        while done < n and self._sample(read=False) is not None:
            done += 1
        return done

    def __iter__(self) -> Iterator[Sample]:
        while True:
            s = self._sample(read=True)
            if s is None:
                return
            yield s


def _pax_records(data: bytes) -> Iterator[tuple[str, str]]:
    pos = 0
    while pos < len(data):
        sp = data.find(b" ", pos)
        if sp < 0:
            return
        try:
            length = int(data[pos:sp])
        except ValueError:
            return
        rec = data[sp + 1:pos + length - 1].decode("utf-8", "replace")
        k, _, v = rec.partition("=")
        yield k, v
        pos += max(length, 1)


def find_sample_headers(data: bytes, base: int, first_ext: str = "png") -> Iterator[tuple[int, str]]:
    """``(byte offset, key)`` of every header in ``data`` (which starts at byte ``base`` of
    the shard) that opens a sample: a regular member ``<key>.<first_ext>`` with a valid
    checksum, at a 512-byte boundary of the shard."""
    start = (-base) % BLOCK
    suffix = "." + first_ext
    for off in range(start, len(data) - BLOCK + 1, BLOCK):
        h = data[off:off + BLOCK]
        if h[156] not in (0x30, 0) or h[257:262] != b"ustar" or not _checksum_ok(h):
            continue
        name = h[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        base_name = name.rsplit("/", 1)[-1]
        if base_name.endswith(suffix) and "." not in base_name[: -len(suffix)]:
            yield base + off, base_name[: -len(suffix)]
