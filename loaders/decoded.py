"""A node-local cache of decoded samples (``make_loader(decoded_cache=...)``).

Decoding PNG is what bounds a loader's speed. Training reads the same samples every
epoch, so each sample is decoded once per node and later epochs copy its pixels out
of a memory-mapped file instead (a ``memcpy`` into the batch slot).

**Layout.** One file per shard, ``<xxh64>-<bytes>-<S>px-<C>c.dec`` (the shard's
checksum and size from the manifest, the image side and the class count), so a
rebuilt split (new checksums) never meets an old file and builds that share a shard
share its entry. A file holds a 4 KiB header (magic and JSON), then ``pixels uint8
[n,S,S]``, ``labels int32 [n]``, ``keys`` (64 bytes each, NUL padded; keys are at
most 64 ASCII characters) and ``flags uint8 [n]`` (1: the sample is there). It is
created at its full size, sparse, and fills sample by sample as the loader decodes.

**Fill protocol.** Whoever is to decode sample ``i`` first claims it: a non-blocking
``fcntl`` lock on flag byte ``i``, then the flag checked again; it decodes, writes
pixels, label and key with ``pwrite`` and then the flag, and unlocks. A process that
finds the lock held waits briefly for the flag (then copies) and never writes; one that
finds the flag set copies: no two processes fill, or normally decode, the same sample. The kernel drops a dead process's locks, and a
flag is written only after the data, so a filler killed at any point leaves at most
one sample unset (it is decoded and filled again later), never a torn one: readers
trust only set flags. Files are created complete (a temporary file with the header,
then ``link``), so a reader never sees half a header.

**Stale data.** The name carries the manifest's checksum. For a local build, the
entry records the identity (device, inode, size, mtime) of the shard file it is
filled from, so it holds what decoding that file gives; a process whose shard file
has another identity (a copy of the build, a shard rewritten since) checks the file's
xxh64 against the manifest before using the entry, and decodes from the shard
instead on a mismatch.

**Budget.** The shards cached are the longest prefix of the manifest's order whose
entries fit in the limit, so every rank and worker makes the same choice without
talking; the rest is decoded every epoch. Older entries of other splits are evicted,
least recently used first, to keep the folder within the limit (under an ``flock``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import socket
import struct
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from shardgen.format.checksum import file_xxh64


if TYPE_CHECKING:
    from .sources import ShardInfo

__all__ = ["DecodedConfig", "DecodedEntry", "DecodedStore", "entry_bytes", "entry_name", "label_bytes", "KEY_BYTES"]

log = logging.getLogger("loaders")

#: Bytes per key slot (shardgen keys are at most 64 ASCII characters).
KEY_BYTES = 64
_MAGIC = b"SGDECOD1"
_HEAD = 4096
_PAGE = 4096


def entry_name(shard: ShardInfo, size: int, classes: int, multilabel: bool = False) -> str:
    """The file name of a shard's entry (checksum, bytes, image side, class count, and
    ``m`` instead of ``c`` for multi-hot targets)."""
    return f"{shard.xxh64}-{shard.bytes}-{size}px-{classes}{'m' if multilabel else 'c'}.dec"


def label_bytes(classes: int, multilabel: bool) -> int:
    """Bytes of one sample's target: an int32 class index, or one 0/1 byte per class."""
    return classes if multilabel else 4


def _offsets(n: int, size: int, lab_bytes: int = 4) -> tuple[int, int, int, int, int]:
    """Byte offsets of pixels, labels, keys, flags and the end of an entry."""
    pix = _HEAD
    lab = pix + n * size * size
    keys = lab + lab_bytes * n
    flags = keys + KEY_BYTES * n
    end = -(-(flags + n) // _PAGE) * _PAGE
    return pix, lab, keys, flags, end


def entry_bytes(n: int, size: int, lab_bytes: int = 4) -> int:
    """Size in bytes of the entry of a shard of ``n`` samples of ``size x size`` pixels
    (``lab_bytes``: :func:`label_bytes`)."""
    return _offsets(n, size, lab_bytes)[4]


def _identity(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _file_xxh64(path: str) -> str | None:
    try:
        return file_xxh64(path)[0]
    except OSError:
        return None


class DecodedEntry:
    """One shard's entry, open for reading (memory-mapped) and filling (``pwrite``).

    Args:
        path: the entry file.
        n: samples in the shard.
        size: side of the square images in pixels.
        multihot: C for a multi-label build (targets stored as C bytes of 0/1), else 0.
    """

    def __init__(self, path: str, n: int, size: int, multihot: int = 0):
        self.path, self.n, self.S, self.C = path, n, size, multihot
        self._lb = multihot or 4
        self._pix, self._lab, self._keys, self._flags, end = _offsets(n, size, self._lb)
        self.fd = os.open(path, os.O_RDWR)
        self._fin = weakref.finalize(self, _close_fd, self.fd)  # once, however it ends
        try:
            if os.fstat(self.fd).st_size != end:
                raise ValueError(f"{path}: {os.fstat(self.fd).st_size} bytes, expected {end}")
            self._mm = mmap.mmap(self.fd, end, prot=mmap.PROT_READ)
        except BaseException:
            self.close()
            raise
        self.pixels = np.frombuffer(self._mm, np.uint8, n * size * size, self._pix).reshape(n, size, size)
        self.labels = (np.frombuffer(self._mm, np.uint8, n * multihot, self._lab).reshape(n, multihot) if multihot
                       else np.frombuffer(self._mm, np.int32, n, self._lab))
        self.complete = False
        self.can_fill = True
        self.fills = 0

    def header(self) -> dict:
        raw = os.pread(self.fd, _HEAD, 0)
        if not raw.startswith(_MAGIC):
            raise ValueError(f"{self.path}: not a decoded-cache entry")
        return json.loads(raw[len(_MAGIC):].rstrip(b"\0"))

    def ready(self, start: int, stop: int) -> bool:
        """Whether samples ``start .. stop-1`` are all there (read with ``pread``: a
        syscall between the flags and the pixels read after them)."""
        if self.complete:
            return True
        if b"\0" in os.pread(self.fd, stop - start, self._flags + start):
            return False
        if start == 0 and stop == self.n:
            self.complete = True
        return True

    def ready_at(self, positions) -> bool:
        """Whether the samples at ``positions`` (ascending) are all there (one ``pread``)."""
        if self.complete or not len(positions):
            return True
        flags = os.pread(self.fd, positions[-1] - positions[0] + 1, self._flags + positions[0])
        return all(flags[p - positions[0]] for p in positions)

    def key(self, pos: int) -> str:
        o = self._keys + pos * KEY_BYTES
        return self._mm[o:o + KEY_BYTES].rstrip(b"\0").decode("ascii")

    def copy_into(self, out: np.ndarray, pos: int):
        """Copy sample ``pos`` (which must be :meth:`ready`) into ``out``; returns its label
        (an int, or the float32 ``[C]`` multi-hot vector)."""
        out[...] = self.pixels[pos]
        return self.labels[pos].astype(np.float32) if self.C else int(self.labels[pos])

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
        """Write sample ``pos`` (claimed by this process); returns whether it was stored. A
        write error (a full disk) turns filling off for this entry in this process; the
        sample is simply not cached."""
        kb = key.encode("ascii", "replace")
        if len(kb) > KEY_BYTES or not key.isascii():
            return False
        try:
            data = np.ascontiguousarray(pixels, dtype=np.uint8)
            o = self._pix + pos * self.S * self.S
            if (os.pwrite(self.fd, data, o) != data.nbytes
                    or os.pwrite(self.fd, self._label_bytes(label), self._lab + self._lb * pos) != self._lb
                    or os.pwrite(self.fd, kb.ljust(KEY_BYTES, b"\0"), self._keys + KEY_BYTES * pos) != KEY_BYTES):
                raise OSError("short write")
            os.pwrite(self.fd, b"\1", self._flags + pos)  # last: the sample is complete
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


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


@dataclass(frozen=True)
class DecodedConfig:
    """Where the decoded cache lives and which shards (manifest indices) it holds."""

    root: str
    shards: frozenset
    limit: int


@dataclass
class DecodedStore:
    """A process's view of the decoded cache of one split (opened lazily, per process).

    Args:
        config: the plan made by :func:`plan_decoded`.
        shards: the split's shards (manifest order).
        size: side of the square images in pixels.
        classes: number of classes.
        local_root: the build's folder when it is local (for the stale-data check).
        multilabel: the targets are multi-hot vectors.
    """

    config: DecodedConfig
    shards: list
    size: int
    classes: int
    local_root: str | None
    multilabel: bool = False
    _open: dict = field(default_factory=dict)

    def entry(self, index: int) -> DecodedEntry | None:
        """The entry of shard ``index`` (created if needed), or None when it is not cached."""
        try:
            return self._open[index]
        except KeyError:
            pass
        e = None
        if index in self.config.shards and self.shards[index].samples > 0:
            try:
                e = self._get(index)
            except (OSError, ValueError) as err:
                log.warning("decoded cache: shard %d not cached: %s", index, err)
        self._open[index] = e
        return e

    def _get(self, index: int) -> DecodedEntry | None:
        shard = self.shards[index]
        path = os.path.join(self.config.root, entry_name(shard, self.size, self.classes, self.multilabel))
        src = None if self.local_root is None else os.path.join(self.local_root, shard.path)
        ident = None if src is None else _identity(src)
        if src is not None and ident is None:
            return None  # missing shard: reading it raises the usual error
        if not os.path.exists(path):
            self._create(path, shard, ident)
        e = DecodedEntry(path, shard.samples, self.size, self.classes if self.multilabel else 0)
        # Filled from another file (a copy of the build, a shard rewritten since): only if
        # this one holds the manifest's bytes.
        if src is not None and e.header().get("source") != ident and _file_xxh64(src) != shard.xxh64:
            e.close()
            return None
        os.utime(path)
        return e

    def _create(self, path: str, shard: ShardInfo, ident: list[int] | None) -> None:
        end = entry_bytes(shard.samples, self.size, label_bytes(self.classes, self.multilabel))
        head = _MAGIC + json.dumps({"n": shard.samples, "size": self.size, "classes": self.classes,
                                    "multilabel": self.multilabel,
                                    "xxh64": shard.xxh64, "bytes": shard.bytes, "source": ident}).encode()
        tmp = os.path.join(self.config.root, f".tmp-{socket.gethostname()}-{os.getpid()}-{os.path.basename(path)}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, end)
            os.pwrite(fd, head.ljust(_HEAD, b"\0"), 0)
            os.close(fd)
            fd = -1
            try:
                os.link(tmp, path)  # atomic; an entry someone else created first wins
            except FileExistsError:
                pass
        finally:
            if fd >= 0:
                os.close(fd)
            os.unlink(tmp)

    def close(self) -> None:
        for e in self._open.values():
            if e is not None:
                e.close()
        self._open.clear()
