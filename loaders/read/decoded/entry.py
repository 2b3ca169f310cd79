"""One shard's entry in the decoded cache: a file of decoded samples, each with its own checksum.

**Layout** (format 2, magic ``SGDECOD2``): a 4 KiB header (magic, then JSON: the shard's
``xxh64`` and ``bytes`` from the manifest, image side, classes, targets, whether the
shard's bytes were verified, and the identity of the local shard file it was filled
from), then ``pixels uint8 [n,S,S]``, ``labels`` (``int32 [n]``, or ``uint8 [n,C]`` 0/1
for multi-hot targets), ``keys`` (64 bytes each, NUL padded), ``sums uint64 [n]`` and
``flags uint8 [n]`` (1: the sample is there), padded to whole pages.

**Sample checksums.** ``sums[i]`` is ``xxh3_64(pixels, seed=xxh3_64(i, label, key,
seed=shard xxh64))``: it covers the sample's pixels, label and key, its place in the
entry and the shard it came from. It is written with the sample (before its flag) and
checked the first time this process copies the sample out (right after the copy, on the
batch slot while it is in cache; a per-process bitmap remembers the samples checked),
so each byte is hashed once per process, not every epoch. Labels are range-checked on
every copy (``0 <= label < C``; multi-hot bytes 0 or 1). A sample that fails either
check is *refused*: never served; its flag is cleared (so it is decoded and filled
again from its shard) and :meth:`DecodedEntry.copy_into` returns None.

**Fill protocol.** Whoever is to decode sample ``i`` first claims it: a non-blocking
``fcntl`` lock on flag byte ``i``, then the flag checked again; it decodes, writes
pixels, label, key and checksum with ``pwrite`` and then the flag, and unlocks. A
process that finds the lock held waits briefly for the flag (then copies) and never
writes. The kernel drops a dead process's locks, and a flag is written only after the
data, so a filler killed at any point leaves at most one sample unset, never a torn one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import stat
import struct
import time
import weakref

import numpy as np
from xxhash import xxh3_64_intdigest

__all__ = ["DecodedEntry", "entry_bytes", "label_bytes", "entry_head", "KEY_BYTES", "ENTRY_MAGIC"]

log = logging.getLogger("loaders")

#: Bytes per key slot (shardgen keys are at most 64 ASCII characters).
KEY_BYTES = 64
#: First bytes of an entry file; format 1 (``SGDECOD1``, no checksums) is never read.
ENTRY_MAGIC = b"SGDECOD2"
_HEAD = 4096
_PAGE = 4096
_SOUND, _REFUSED = 1, 2


def label_bytes(classes: int, multilabel: bool) -> int:
    """Bytes of one sample's target: an int32 class index, or one 0/1 byte per class."""
    return classes if multilabel else 4


def _offsets(n: int, size: int, lab_bytes: int = 4) -> tuple[int, int, int, int, int, int]:
    """Byte offsets of pixels, labels, keys, checksums, flags and the end of an entry."""
    pix = _HEAD
    lab = pix + n * size * size
    keys = lab + lab_bytes * n
    sums = keys + KEY_BYTES * n
    flags = sums + 8 * n
    end = -(-(flags + n) // _PAGE) * _PAGE
    return pix, lab, keys, sums, flags, end


def entry_bytes(n: int, size: int, lab_bytes: int = 4) -> int:
    """Size in bytes of the entry of a shard of ``n`` samples of ``size x size`` pixels
    (``lab_bytes``: :func:`label_bytes`)."""
    return _offsets(n, size, lab_bytes)[5]


def entry_head(fields: dict) -> bytes:
    """The header block of a new entry holding ``fields`` (JSON after the magic)."""
    raw = ENTRY_MAGIC + json.dumps(fields, sort_keys=True).encode()
    if len(raw) > _HEAD:
        raise ValueError("decoded-cache header too long")
    return raw.ljust(_HEAD, b"\0")


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class DecodedEntry:
    """One shard's entry, open for reading (memory-mapped) and filling (``pwrite``).

    Args:
        path: the entry file (its name inside ``dir_fd`` when that is given).
        n: samples in the shard.
        size: side of the square images in pixels.
        multihot: C for a multi-label build (targets stored as C bytes of 0/1), else 0.
        classes: C, the class count (labels out of ``[0, C)`` are refused); 0: not checked.
        seed: the shard's xxh64 as an integer (binds each sample's checksum to its shard).
        dir_fd: the cache folder, opened by :func:`loaders.read.private.open_private_dir`.

    Raises:
        OSError: it cannot be opened (``ELOOP``: a symbolic link, never followed).
        ValueError: not a regular file of this user, or not of the expected size.
    """

    def __init__(self, path: str, n: int, size: int, multihot: int = 0, classes: int = 0, seed: int = 0,
                 dir_fd: int | None = None):
        self.path, self.n, self.S, self.C = path, n, size, multihot
        self.classes, self.seed = classes or multihot, seed & 0xFFFFFFFFFFFFFFFF
        self._lb = multihot or 4
        self._pix, self._lab, self._keys, self._sums, self._flags, end = _offsets(n, size, self._lb)
        name = os.path.basename(path) if dir_fd is not None else path
        self.fd = os.open(name, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        self._fin = weakref.finalize(self, _close_fd, self.fd)  # once, however it ends
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise ValueError(f"{path}: not a regular file of this user")
            if st.st_size != end:
                raise ValueError(f"{path}: {st.st_size} bytes, expected {end}")
            self._mm = mmap.mmap(self.fd, end, prot=mmap.PROT_READ)
        except BaseException:
            self.close()
            raise
        self.pixels = np.frombuffer(self._mm, np.uint8, n * size * size, self._pix).reshape(n, size, size)
        self.labels = (np.frombuffer(self._mm, np.uint8, n * multihot, self._lab).reshape(n, multihot) if multihot
                       else np.frombuffer(self._mm, "<i4", n, self._lab))
        self.sums = np.frombuffer(self._mm, "<u8", n, self._sums)
        self._seen = bytearray(n)  # per process: 0 not checked yet, 1 sound, 2 refused
        self._stuck = 0            # refused samples whose flag could not be cleared
        self.refused = 0
        self.complete = False
        self.can_fill = True
        self.fills = 0

    def header(self) -> dict:
        """The header's fields. Raises ValueError: not an entry of this format."""
        raw = os.pread(self.fd, _HEAD, 0)
        if not raw.startswith(ENTRY_MAGIC):
            raise ValueError(f"{self.path}: not a decoded-cache entry of format 2")
        d = json.loads(raw[len(ENTRY_MAGIC):].rstrip(b"\0"))
        if not isinstance(d, dict):
            raise ValueError(f"{self.path}: not a decoded-cache entry of format 2")
        return d

    def ready(self, start: int, stop: int) -> bool:
        """Whether samples ``start .. stop-1`` are all there (read with ``pread``: a
        syscall between the flags and the pixels read after them) and none is refused here."""
        if self.complete:
            return True
        if b"\0" in os.pread(self.fd, stop - start, self._flags + start):
            return False
        if self._stuck and _REFUSED in self._seen[start:stop]:
            return False
        if start == 0 and stop == self.n and not self._stuck:
            self.complete = True
        return True

    def ready_at(self, positions) -> bool:
        """Whether the samples at ``positions`` (ascending) are all there (one ``pread``)."""
        if self.complete or not len(positions):
            return True
        flags = os.pread(self.fd, positions[-1] - positions[0] + 1, self._flags + positions[0])
        seen = self._seen if self._stuck else None
        return all(flags[p - positions[0]] and (seen is None or seen[p] != _REFUSED) for p in positions)

    def key(self, pos: int) -> str:
        """The stored key of sample ``pos`` (checked with the sample when it is copied out)."""
        o = self._keys + pos * KEY_BYTES
        return self._mm[o:o + KEY_BYTES].rstrip(b"\0").decode("ascii", "replace")

    def _sum(self, pos: int, pixels, lab: bytes, key_slot: bytes) -> int:
        meta = pos.to_bytes(8, "little") + lab + key_slot
        return xxh3_64_intdigest(pixels, seed=xxh3_64_intdigest(meta, seed=self.seed))

    def copy_into(self, out: np.ndarray, pos: int):
        """Copy sample ``pos`` (which must be :meth:`ready`) into ``out``; returns its label
        (an int, or the float32 ``[C]`` multi-hot vector), or None when the sample fails its
        checksum (first copy in this process) or its label is out of range: it is refused
        (see the module doc) and ``out`` must be filled from the shard instead."""
        seen = self._seen[pos]
        if seen == _REFUSED:
            return None
        out[...] = self.pixels[pos]
        lo = self._lab + pos * self._lb
        if not seen:
            ko = self._keys + pos * KEY_BYTES
            px = out if out.flags.c_contiguous and out.dtype == np.uint8 else self.pixels[pos]
            if self._sum(pos, px, self._mm[lo:lo + self._lb], self._mm[ko:ko + KEY_BYTES]) != int(self.sums[pos]):
                return self.refuse(pos, "fails its checksum")
            self._seen[pos] = _SOUND
        if self.C:
            raw = self._mm[lo:lo + self._lb]
            if raw.strip(b"\0\1"):
                return self.refuse(pos, "has a target byte other than 0 or 1")
            return np.frombuffer(raw, np.uint8).astype(np.float32)
        label = int(self.labels[pos])
        if self.classes and not 0 <= label < self.classes:
            return self.refuse(pos, f"has label {label}, not in [0, {self.classes})")
        return label

    def refuse(self, pos: int, why: str) -> None:
        """Never serve sample ``pos`` as it is: clear its flag (under its lock) so that it is
        decoded and filled again from its shard; if that cannot be done, this process
        reads it from its shard from now on. Returns None."""
        self.complete = False
        self._seen[pos] = 0
        if not self.refused:
            log.warning("decoded cache %s: sample %d %s: decoded again from its shard", self.path, pos, why)
        self.refused += 1
        flag = self._flags + pos
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, flag, os.SEEK_SET)
            try:
                if os.pwrite(self.fd, b"\0", flag) == 1:
                    return None
            finally:
                fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, flag, os.SEEK_SET)
        except OSError:
            pass
        self._seen[pos] = _REFUSED
        self._stuck += 1
        return None

    def _label_bytes(self, label) -> bytes:
        if self.C:
            return np.asarray(label, dtype=np.float32).astype(np.uint8).tobytes()
        return struct.pack("<i", label)

    def claim(self, pos: int) -> str:
        """Take sample ``pos`` to decode it here: ``"ours"`` (this process holds its lock until
        :meth:`release`: decode, :meth:`store`, release), ``"ready"`` (it is there: copy it),
        or ``"busy"`` (another process is filling it right now)."""
        if not self.can_fill:
            return "busy"
        flag = self._flags + pos
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, flag, os.SEEK_SET)
        except OSError:
            return "busy"
        if os.pread(self.fd, 1, flag) != b"\0":
            self.release(pos)
            return "ready"
        return "ours"

    def release(self, pos: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, self._flags + pos, os.SEEK_SET)

    def wait_ready(self, pos: int, timeout: float) -> bool:
        """Whether sample ``pos`` is there within ``timeout`` seconds (polled every ms): a
        filler that is alive finishes in a few ms; a stuck one is not waited for longer."""
        end = time.monotonic() + timeout
        while True:
            if self.ready(pos, pos + 1):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.001)

    def store(self, pos: int, pixels: np.ndarray, label, key: str) -> bool:
        """Write sample ``pos`` (claimed by this process) with its checksum; returns whether
        it was stored. A write error (a full disk) turns filling off for this entry in this
        process; the sample is simply not cached."""
        kb = key.encode("ascii", "replace")
        if len(kb) > KEY_BYTES or not key.isascii():
            return False
        try:
            data = np.ascontiguousarray(pixels, dtype=np.uint8)
            lab, slot = self._label_bytes(label), kb.ljust(KEY_BYTES, b"\0")
            total = struct.pack("<Q", self._sum(pos, data, lab, slot))
            if (os.pwrite(self.fd, data, self._pix + pos * self.S * self.S) != data.nbytes
                    or os.pwrite(self.fd, lab, self._lab + self._lb * pos) != self._lb
                    or os.pwrite(self.fd, slot, self._keys + KEY_BYTES * pos) != KEY_BYTES
                    or os.pwrite(self.fd, total, self._sums + 8 * pos) != 8):
                raise OSError("short write")
            os.pwrite(self.fd, b"\1", self._flags + pos)  # last: the sample is complete
            if self._seen[pos] == _REFUSED:
                self._stuck -= 1
            self._seen[pos] = _SOUND
            self.fills += 1
            return True
        except OSError as e:
            log.warning("decoded cache %s: not filling any more: %s", self.path, getattr(e, "strerror", None) or e)
            self.can_fill = False
            return False

    def fill(self, pos: int, pixels: np.ndarray, label, key: str) -> bool:
        """Store sample ``pos`` unless it is there or another process is storing it (claim,
        store, release); returns whether this call stored it."""
        if self.claim(pos) != "ours":
            return False
        try:
            return self.store(pos, pixels, label, key)
        finally:
            self.release(pos)

    def close(self) -> None:
        """Close the file (the mapping goes when the last view of it does)."""
        self._fin()
