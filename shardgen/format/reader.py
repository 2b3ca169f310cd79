"""The one streaming tar reader of shardgen (``docs/format.md``, "Shards").

:class:`TarReader` reads a tar front to back from any object with ``read(n)`` (plus
``skip(n)`` when it can skip without reading, e.g. a seek), and never seeks back. It
groups members into samples the way webdataset does (key = the member name up to the
first dot of its base name), reads only the member data asked for, can skip whole samples,
restart at a known sample header after a seek, and tells a shard cut at a member boundary
(no end-of-archive marker) from a complete one. It reads PAX and GNU long names, for
shards written by other tools.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

from .validate import member_name_problem, shown
from .writer import BLOCK

__all__ = ["ShardReadError", "TarReader", "Member", "Sample", "split_member_name", "find_sample_headers"]

_ZERO = bytes(BLOCK)
#: webdataset's rule: key = everything before the first dot of the base name, ext = the rest.
_NAME_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_REGULAR = (b"0", b"\0", b"7")


class ShardReadError(Exception):
    """A shard could not be read (truncated, corrupt header, not a tar, irregular member)."""


@dataclass
class Member:
    """One tar member: name, data (None when not read or not a regular file), type flag, size."""

    name: str
    data: bytes | None
    type: bytes = b"0"
    size: int = 0


@dataclass
class Sample:
    """One sample: its key and the members read (``{ext: bytes}``, in tar order; b"" for
    members present but not asked for). ``duplicate_exts`` lists extensions seen twice."""

    key: str
    parts: dict[str, bytes] = field(default_factory=dict)
    duplicate_exts: list[str] = field(default_factory=list)


def split_member_name(name: str) -> tuple[str, str] | None:
    """``"abc.png"`` -> ``("abc", "png")``; None when the base name has no extension."""
    m = _NAME_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def _number(f: bytes) -> int:
    if f[:1] and f[0] & 0x80:  # GNU base-256
        v = int.from_bytes(f[1:], "big")
        return v - (1 << (8 * (len(f) - 1))) * (f[0] & 0x40 > 0)
    s = f.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def _checksum_ok(h: bytes) -> bool:
    """The header checksum, unsigned as POSIX says, or signed as some old tars wrote it."""
    try:
        stored = _number(h[148:156])
    except ValueError:
        return False
    unsigned = sum(h) - sum(h[148:156]) + 256
    return stored == unsigned or stored == unsigned - 2 * sum(b for b in h[:148] + h[156:] if b >= 128)


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        if length <= 0:
            raise ValueError("bad pax record length")
        k, _, v = data[sp + 1:pos + length - 1].partition(b"=")
        out[k.decode("utf-8", "surrogateescape")] = v.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _padded(n: int) -> int:
    return (n + BLOCK - 1) // BLOCK * BLOCK


class TarReader:
    """Stream the members and samples of one tar.

    Args:
        stream: object with ``read(n) -> bytes``; its ``skip(n)`` is used when present.
        want: member extensions whose data is read (None: all); others are skipped.
        limit: the most bytes any one member may declare (None: no limit). A header that
            declares more is a :class:`ShardReadError` before anything is read or allocated:
            pass the shard's size from the manifest, or less (``format.member_limit``).

    Every member name :meth:`samples` yields follows the key rule and the member
    extensions' allow-list (``format.validate``); a name that breaks it is a
    :class:`ShardReadError` (or, with a ``problems`` list, a problem and the member is skipped).

    Attributes:
        offset: bytes of the tar consumed so far.
        index: samples passed so far (read or skipped).
    """

    def __init__(self, stream, want: tuple[str, ...] | frozenset | None = None, limit: int | None = None) -> None:
        self.stream = stream
        self.want = None if want is None else frozenset(want)
        self.limit = limit
        self._skip_fn = getattr(stream, "skip", None)
        self.offset = 0
        self.index = 0
        self._peek: Member | None = None
        self._done = False

    def restart_at(self, offset: int, index: int) -> None:
        """The stream now stands at byte ``offset``, the header of sample ``index``."""
        self.offset, self.index = offset, index
        self._peek, self._done = None, False

    # -- bytes -------------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        try:
            data = self.stream.read(n)
            while 0 < len(data) < n:
                more = self.stream.read(n - len(data))
                if not more:
                    break
                data += more
        except (OSError, ValueError) as e:
            raise ShardReadError(f"read error at byte {self.offset:,}: {e}") from None
        self.offset += len(data)
        return data

    def _skip(self, n: int) -> None:
        if not n:
            return
        if self._skip_fn is None:
            got = len(self._read(n))
            if got < n:
                raise ShardReadError(f"truncated: the file ends at byte {self.offset:,}, inside a member")
            return
        self._skip_fn(n)
        self.offset += n

    # -- members -----------------------------------------------------------------
    def _header(self) -> tuple[bytes, int] | None:
        """Next header block and its size field; None at the end-of-archive marker."""
        at = self.offset
        h = self._read(BLOCK)
        if len(h) < BLOCK:
            if not h:
                if at == 0:
                    raise ShardReadError("empty file (0 bytes)")
                raise ShardReadError(f"truncated: ends at byte {at:,} without the tar end-of-archive marker")
            raise ShardReadError(f"truncated: ends inside a tar header at byte {at + len(h):,}")
        if h == _ZERO:
            return None
        if not _checksum_ok(h):
            raise ShardReadError(f"{'not a tar file' if at == 0 else 'corrupt tar header'} at byte {at:,} "
                                 "(checksum mismatch)")
        try:
            size = _number(h[124:136])
        except ValueError:
            raise ShardReadError(f"corrupt tar header at byte {at:,} (size)") from None
        self._check_size(size, at)
        return h, size

    def _check_size(self, size: int, at: int) -> None:
        if size < 0 or (self.limit is not None and size > self.limit):
            raise ShardReadError(f"corrupt tar header at byte {at:,}: a member of {size:,} bytes "
                                 f"(at most {self.limit:,} allowed)")

    def _member(self) -> Member | None:
        """Next member's header; a regular file's data is left unread (see :meth:`_consume`)."""
        name: str | None = None
        size_override: int | None = None
        while True:
            got = self._header()
            if got is None:
                self._done = True
                return None
            h, size = got
            typ = h[156:157]
            if size_override is not None:
                size, size_override = size_override, None
            if typ in (b"x", b"g", b"L", b"K"):
                data = self._data(size, True, "extended header")
                if typ == b"L":
                    name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                elif typ == b"x":
                    try:
                        pax = _pax(data)
                    except ValueError:
                        raise ShardReadError(f"corrupt pax header before byte {self.offset:,}") from None
                    name = pax.get("path", name)
                    try:
                        size_override = int(pax["size"]) if "size" in pax else None
                    except ValueError:
                        raise ShardReadError(f"corrupt pax header before byte {self.offset:,} (size)") from None
                    if size_override is not None:
                        self._check_size(size_override, self.offset)
                continue
            if name is None:
                raw = h[0:100].split(b"\0", 1)[0]
                if h[257:262] == b"ustar" and h[345]:
                    raw = h[345:500].split(b"\0", 1)[0] + b"/" + raw
                name = raw.decode("utf-8", "surrogateescape")
            if typ not in _REGULAR:
                self._skip(_padded(size))
            return Member(name, None, typ, size)

    def _consume(self, m: Member, read: bool) -> None:
        """Read (``read``) or skip the data of regular member ``m``, whose header was just read."""
        m.data = self._data(m.size, read, m.name)

    def _wanted(self, ext: str | None) -> bool:
        return self.want is None or (ext is not None and ext in self.want)

    def _data(self, size: int, read: bool, what: str) -> bytes | None:
        if not read:
            self._skip(_padded(size))
            return None
        data = self._read(size)
        if len(data) < size:
            raise ShardReadError(f"truncated: member {what} needs {size:,} bytes, the file ends after {len(data):,}")
        self._skip(_padded(size) - size)
        return data

    def members(self) -> Iterator[Member]:
        """Every member in order (data None for members not wanted or not regular files)."""
        while not self._done:
            m = self._member()
            if m is None:
                return
            if m.type in _REGULAR:
                parsed = split_member_name(m.name)
                self._consume(m, self._wanted(parsed[1] if parsed else None))
            yield m

    # -- samples -----------------------------------------------------------------
    def _next_file(self, problems: list[str] | None) -> tuple[Member, str, str] | None:
        """Next regular ``<key>.<ext>`` member, data unread; irregular ones are problems."""
        while True:
            m = self._peek or (None if self._done else self._member())
            self._peek = None
            if m is None:
                return None
            parsed = split_member_name(m.name)
            bad = member_name_problem(m.name) if problems is None and parsed is not None else None
            if m.type in _REGULAR and parsed is not None and bad is None:
                return m, parsed[0], parsed[1]
            if m.type in _REGULAR:
                self._consume(m, False)
            if bad is not None:
                raise ShardReadError(f"{bad} (before byte {self.offset:,})")
            what = "not a regular file" if m.type not in _REGULAR else "name has no extension"
            if problems is None:
                raise ShardReadError(f"member {shown(m.name)} before byte {self.offset:,}: {what}")
            problems.append(f"member {shown(m.name)}: {what}")

    def _sample(self, problems: list[str] | None, read: bool) -> Sample | None:
        head = self._next_file(problems)
        if head is None:
            return None
        s = Sample(head[1])
        while head is not None:
            m, key, ext = head
            if key != s.key:
                self._peek = m
                break
            self._consume(m, read and self._wanted(ext))
            if ext in s.parts:
                if problems is None:
                    raise ShardReadError(f"sample {s.key}: duplicate member .{ext}")
                s.duplicate_exts.append(ext)
            s.parts[ext] = m.data if m.data is not None else b""
            head = self._next_file(problems)
        self.index += 1
        return s

    def samples(self, problems: list[str] | None = None) -> Iterator[Sample]:
        """The samples in order.

        Args:
            problems: None to raise :class:`ShardReadError` on a non-regular member, a name
                without extension or a repeated extension; a list to record them there
                (one line each) and go on.
        """
        while True:
            s = self._sample(problems, read=True)
            if s is None:
                return
            yield s

    def skip_samples(self, n: int) -> int:
        """Skip ``n`` samples without reading their data; returns how many were skipped."""
        done = 0
        while done < n and self._sample(None, read=False) is not None:
            done += 1
        return done


def find_sample_headers(data: bytes, base: int, first_ext: str = "png") -> Iterator[tuple[int, str]]:
    """``(byte offset, key)`` of every header in ``data`` (which starts at byte ``base`` of
    the shard) that opens a sample: a regular member ``<key>.<first_ext>`` with a valid
    checksum, at a 512-byte boundary of the shard."""
    suffix = "." + first_ext
    for off in range((-base) % BLOCK, len(data) - BLOCK + 1, BLOCK):
        h = data[off:off + BLOCK]
        if h[156:157] not in (b"0", b"\0") or h[257:262] != b"ustar" or not _checksum_ok(h):
            continue
        name = h[0:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        base_name = name.rsplit("/", 1)[-1]
        if base_name.endswith(suffix) and "." not in base_name[: -len(suffix)]:
            yield base + off, base_name[: -len(suffix)]
