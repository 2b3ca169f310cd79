"""Stream the samples of a shard, member by member, from any fsspec file object.

Shared by ``verify``, ``preview`` and ``stylegan``. A shard is read once, front to back,
optionally through :class:`HashingReader` (which hashes and counts every byte that
passes); :func:`iter_members` parses the tar headers itself (ustar, with pax and GNU
long-name records), which is several times faster than :mod:`tarfile`'s stream mode and
tells a shard cut at a member boundary (no end-of-archive marker) from a complete one.
:func:`iter_samples` groups consecutive members that share a key into one sample the
way webdataset does (key = member name up to the first dot of its base name). Nothing
holds more than one member in memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

import xxhash

__all__ = ["ShardReadError", "HashingReader", "Member", "Sample", "split_member_name",
           "iter_members", "iter_samples", "open_shard"]

#: webdataset's rule: key = everything before the first dot of the base name, ext = the rest.
_NAME_RE = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_BLOCK = 1 << 20
_ZERO = bytes(512)


class ShardReadError(Exception):
    """A shard could not be read to its end (missing, truncated, not a tar, unreachable)."""


class HashingReader:
    """A read-only stream over ``f`` that hashes (xxh64) and counts every byte read."""

    def __init__(self, f) -> None:
        self.f = f
        self.h = xxhash.xxh64()
        self.n = 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read() if size is None or size < 0 else self.f.read(size)
        self.h.update(data)
        self.n += len(data)
        return data

    def drain(self) -> None:
        """Read (and hash) whatever is left, e.g. the tar's end-of-archive padding."""
        while True:
            b = self.f.read(_BLOCK)
            if not b:
                return
            self.h.update(b)
            self.n += len(b)

    def hexdigest(self) -> str:
        return self.h.hexdigest()


@dataclass
class Member:
    """One tar member: its name, its data (None unless a regular file) and type flag."""

    name: str
    data: bytes | None
    type: bytes = b"0"


@dataclass
class Sample:
    """One sample: its key and its members (``{ext: bytes}``, in tar order).

    ``duplicate_exts`` lists extensions that appeared twice within the sample.
    """

    key: str
    parts: dict[str, bytes] = field(default_factory=dict)
    duplicate_exts: list[str] = field(default_factory=list)


def split_member_name(name: str) -> tuple[str, str] | None:
    """``"abc.png"`` -> ``("abc", "png")``; None when the base name has no extension."""
    m = _NAME_RE.match(name)
    return (m.group(1), m.group(2)) if m else None


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        b = stream.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def _number(field_: bytes) -> int:
    if field_[:1] and field_[0] & 0x80:  # GNU base-256
        v = int.from_bytes(field_[1:], "big")
        return v - (1 << (8 * (len(field_) - 1))) * (field_[0] & 0x40 > 0)
    s = field_.split(b"\0", 1)[0].strip()
    return int(s, 8) if s else 0


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        sp = data.index(b" ", pos)
        length = int(data[pos:sp])
        rec = data[sp + 1:pos + length - 1]
        k, _, v = rec.partition(b"=")
        out[k.decode("utf-8", "replace")] = v.decode("utf-8", "replace")
        pos += length
    return out


def iter_members(stream) -> Iterator[Member]:
    """Yield the members of the tar on ``stream`` in order, reading it sequentially.

    Stops after the end-of-archive marker (the rest of the stream is left unread).

    Raises:
        ShardReadError: the stream ends early, a header is corrupt, or it is not a tar.
    """
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        try:
            hdr = _read_exact(stream, 512)
        except (OSError, ValueError) as e:
            raise ShardReadError(f"read error at byte {offset:,}: {e}") from None
        if not hdr:
            if offset == 0:
                raise ShardReadError("empty file (0 bytes)")
            raise ShardReadError(f"truncated: ends at byte {offset:,} without the tar end-of-archive marker")
        if len(hdr) < 512:
            raise ShardReadError(f"truncated: ends inside a tar header at byte {offset + len(hdr):,}")
        if hdr == _ZERO:
            return
        try:
            stored = _number(hdr[148:156])
            unsigned = sum(hdr) - sum(hdr[148:156]) + 256
            if stored != unsigned and stored != unsigned - 2 * sum(b for b in hdr[:148] + hdr[156:] if b >= 128):
                raise ValueError("checksum mismatch")
            size = _number(hdr[124:136])
            if size < 0:
                raise ValueError("negative size")
        except ValueError as e:
            what = "not a tar file" if offset == 0 else "corrupt tar header"
            raise ShardReadError(f"{what} at byte {offset:,} ({e})") from None
        typ = hdr[156:157]
        name = hdr[0:100].split(b"\0", 1)[0]
        if hdr[257:262] == b"ustar":
            prefix = hdr[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        sname = name.decode("utf-8", "surrogateescape")
        if "size" in pax:
            size = int(pax["size"])
        offset += 512
        padded = (size + 511) // 512 * 512
        try:
            data = _read_exact(stream, padded)
        except (OSError, ValueError) as e:
            raise ShardReadError(f"read error at byte {offset:,}: {e}") from None
        if len(data) < padded:
            raise ShardReadError(f"truncated: member {sname} needs {size:,} bytes, the file ends "
                                 f"after {max(0, len(data)):,}")
        offset += padded
        data = data[:size]
        if typ in (b"x", b"g"):
            if typ == b"x":
                try:
                    pax = _pax(data)
                except ValueError:
                    raise ShardReadError(f"corrupt pax header before byte {offset:,}") from None
            continue
        if typ == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if typ == b"K":
            continue
        if long_name is not None:
            sname, long_name = long_name, None
        if "path" in pax:
            sname = pax["path"]
        pax = {}
        yield Member(sname, data if typ in (b"0", b"\0", b"7") else None, typ)


def iter_samples(stream, problems: list[str] | None = None) -> Iterator[Sample]:
    """Group the tar members on ``stream`` into samples (consecutive members sharing a key).

    Members without an extension and non-file members are skipped; when ``problems`` is
    a list, a line describing each is appended to it.
    """
    cur: Sample | None = None
    for m in iter_members(stream):
        parsed = split_member_name(m.name)
        if m.data is None or parsed is None:
            if problems is not None:
                what = "not a regular file" if m.data is None else "name has no extension"
                problems.append(f"member {m.name!r}: {what}")
            continue
        key, ext = parsed
        if cur is not None and key == cur.key:
            if ext in cur.parts:
                cur.duplicate_exts.append(ext)
            cur.parts[ext] = m.data
            continue
        if cur is not None:
            yield cur
        cur = Sample(key=key, parts={ext: m.data})
    if cur is not None:
        yield cur


def open_shard(build, relpath: str):
    """Open shard ``relpath`` of ``build`` (a :class:`shardgen.storage.Build`) for streaming.

    Raises:
        ShardReadError: missing or unreadable.
    """
    try:
        return build.fs.open(build.join(relpath), "rb", block_size=_BLOCK)
    except FileNotFoundError:
        raise ShardReadError("missing: listed in manifest.json but not found") from None
    except (OSError, ValueError) as e:
        raise ShardReadError(f"cannot open: {e}") from None
