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

**Fill protocol.** Whoever decodes sample ``i`` takes a non-blocking ``fcntl`` lock on
flag byte ``i``, checks the flag again, writes pixels, label and key with ``pwrite``
and then the flag. A process that finds the lock held or the flag set does not write:
no two processes fill the same sample. The kernel drops a dead process's locks, and a
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
import getpass
import json
import logging
import mmap
import os
import socket
import struct
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from shardgen.format.checksum import file_xxh64

from .errors import UsageError
from .sources import parse_size

if TYPE_CHECKING:
    from .sources import ShardInfo

__all__ = ["DecodedConfig", "DecodedEntry", "DecodedStore", "plan_decoded", "check_decoded_args", "entry_bytes",
           "entry_name", "auto_places", "ENV_PLACE", "KEY_BYTES"]

log = logging.getLogger("loaders")

#: Environment variable that overrides the default place (a folder, or ``off``).
ENV_PLACE = "SHARDGEN_DECODED_CACHE"
#: Bytes per key slot (shardgen keys are at most 64 ASCII characters).
KEY_BYTES = 64
_MAGIC = b"SGDECOD1"
_HEAD = 4096
_PAGE = 4096


def entry_name(shard: ShardInfo, size: int, classes: int) -> str:
    """The file name of a shard's entry (checksum, bytes, image side, class count)."""
    return f"{shard.xxh64}-{shard.bytes}-{size}px-{classes}c.dec"


def _offsets(n: int, size: int) -> tuple[int, int, int, int, int]:
    """Byte offsets of pixels, labels, keys, flags and the end of an entry."""
    pix = _HEAD
    lab = pix + n * size * size
    keys = lab + 4 * n
    flags = keys + KEY_BYTES * n
    end = -(-(flags + n) // _PAGE) * _PAGE
    return pix, lab, keys, flags, end


def entry_bytes(n: int, size: int) -> int:
    """Size in bytes of the entry of a shard of ``n`` samples of ``size x size`` pixels."""
    return _offsets(n, size)[4]


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
    """

    def __init__(self, path: str, n: int, size: int):
        self.path, self.n, self.S = path, n, size
        self._pix, self._lab, self._keys, self._flags, end = _offsets(n, size)
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
        self.labels = np.frombuffer(self._mm, np.int32, n, self._lab)
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

    def key(self, pos: int) -> str:
        o = self._keys + pos * KEY_BYTES
        return self._mm[o:o + KEY_BYTES].rstrip(b"\0").decode("ascii")

    def copy_into(self, out: np.ndarray, pos: int) -> int:
        """Copy sample ``pos`` (which must be :meth:`ready`) into ``out``; returns its label."""
        out[...] = self.pixels[pos]
        return int(self.labels[pos])

    def fill(self, pos: int, pixels: np.ndarray, label: int, key: str) -> bool:
        """Store sample ``pos`` unless it is there or another process is storing it.

        Returns whether this call stored it. A write error (a full disk) turns filling
        off for this entry in this process; the sample is simply not cached.
        """
        if not self.can_fill:
            return False
        kb = key.encode("ascii", "replace")
        if len(kb) > KEY_BYTES or not key.isascii():
            return False
        flag = self._flags + pos
        try:
            fcntl.lockf(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, flag, os.SEEK_SET)
        except OSError:
            return False  # someone is filling it right now
        try:
            if os.pread(self.fd, 1, flag) != b"\0":
                return False
            data = np.ascontiguousarray(pixels, dtype=np.uint8)
            o = self._pix + pos * self.S * self.S
            if (os.pwrite(self.fd, data, o) != data.nbytes
                    or os.pwrite(self.fd, struct.pack("<i", label), self._lab + 4 * pos) != 4
                    or os.pwrite(self.fd, kb.ljust(KEY_BYTES, b"\0"), self._keys + KEY_BYTES * pos) != KEY_BYTES):
                raise OSError("short write")
            os.pwrite(self.fd, b"\1", flag)  # last: the sample is complete
            self.fills += 1
            return True
        except OSError as e:
            log.warning("decoded cache %s: not filling any more: %s", self.path, getattr(e, "strerror", None) or e)
            self.can_fill = False
            return False
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, flag, os.SEEK_SET)

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
    """

    config: DecodedConfig
    shards: list
    size: int
    classes: int
    local_root: str | None
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
        path = os.path.join(self.config.root, entry_name(shard, self.size, self.classes))
        src = None if self.local_root is None else os.path.join(self.local_root, shard.path)
        ident = None if src is None else _identity(src)
        if src is not None and ident is None:
            return None  # missing shard: reading it raises the usual error
        if not os.path.exists(path):
            self._create(path, shard, ident)
        e = DecodedEntry(path, shard.samples, self.size)
        # Filled from another file (a copy of the build, a shard rewritten since): only if
        # this one holds the manifest's bytes.
        if src is not None and e.header().get("source") != ident and _file_xxh64(src) != shard.xxh64:
            e.close()
            return None
        os.utime(path)
        return e

    def _create(self, path: str, shard: ShardInfo, ident: list[int] | None) -> None:
        end = entry_bytes(shard.samples, self.size)
        head = _MAGIC + json.dumps({"n": shard.samples, "size": self.size, "classes": self.classes,
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


# -- planning (main process, at make_loader) -------------------------------------------------------------
def auto_places() -> list[str]:
    """The default places, in order of preference: ``$SHARDGEN_DECODED_CACHE`` alone when
    set, else ``/dev/shm/shardgen-<user>`` (memory) and ``$XDG_CACHE_HOME/shardgen/decoded``
    (``~/.cache/shardgen/decoded``)."""
    env = os.environ.get(ENV_PLACE)
    if env:
        return [] if env.strip().lower() in ("off", "0", "none", "false") else [env]
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    out = []
    if os.path.isdir("/dev/shm"):
        out.append(f"/dev/shm/shardgen-{user}")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out.append(os.path.join(xdg, "shardgen", "decoded"))
    return out


def _entries(root: str) -> list[tuple[float, str, int, int]]:
    """``(last use, name, bytes, allocated bytes)`` of the entries in ``root``, oldest first."""
    out = []
    for n in os.listdir(root):
        if n.endswith(".dec") and not n.startswith("."):
            try:
                st = os.stat(os.path.join(root, n))
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, n, st.st_size, st.st_blocks * 512))
    out.sort()
    return out


def _auto_limit(root: str) -> int:
    """Half of the file system holding ``root``, at most its free space plus what the
    cache already holds there, minus a reserve of 10% of the file system (at most 2 GiB)."""
    st = os.statvfs(root)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    held = sum(e[3] for e in _entries(root))
    return max(0, min(total // 2, free + held - min(total // 10, 2 << 30)))


def _prepare(place: str) -> str | None:
    root = os.path.abspath(os.path.expanduser(str(place)))
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return root if os.access(root, os.W_OK | os.X_OK) else None


def _evict(root: str, keep: dict[str, int], limit: int) -> None:
    """Touch the entries in ``keep``; delete others, least recently used first, until the
    folder's entries plus the missing ones of ``keep`` fit in ``limit``."""
    with open(os.path.join(root, ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _entries(root)
        have = {e[1] for e in entries}
        for n in set(keep) & have:
            try:
                os.utime(os.path.join(root, n))
            except FileNotFoundError:
                pass
        total = sum(e[2] for e in entries) + sum(b for n, b in keep.items() if n not in have)
        for _, n, size, _alloc in entries:
            if total <= limit:
                break
            if n not in keep:
                _unlink(os.path.join(root, n))
                log.info("decoded cache: evicted %s", n)
                total -= size
        now = time.time()
        for n in os.listdir(root):  # left by processes killed while creating an entry
            p = os.path.join(root, n)
            try:
                if n.startswith(".tmp-") and now - os.stat(p).st_mtime > 3600:
                    _unlink(p)
            except FileNotFoundError:
                pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_decoded_args(cache: Any, limit: Any) -> int | None:
    """Check ``decoded_cache`` and ``decoded_cache_limit`` (before any work); returns the
    limit in bytes, None for ``"auto"``.

    Raises:
        UsageError: ``cache`` is not ``"auto"``, True, a folder, None or False, or ``limit``
            is not ``"auto"`` or a positive size.
    """
    if not (cache is None or isinstance(cache, (bool, str, os.PathLike))):
        raise UsageError(f"decoded_cache must be 'auto', a folder, or None, got {cache!r}")
    return None if isinstance(limit, str) and limit == "auto" else parse_size(limit, "decoded_cache_limit")


def plan_decoded(shards: list, size: int, classes: int, cache: Any = "auto",
                 limit: Any = "auto") -> DecodedConfig | None:
    """Decide where the decoded cache of a split lives and which shards it holds.

    Args:
        shards: the split's shards (manifest order).
        size, classes: image side in pixels and number of classes.
        cache: ``"auto"``/True (the first of :func:`auto_places` where the whole split fits
            its limit, else the one with the largest limit), a folder, or None/False (off).
        limit: most bytes the folder may hold (all splits together), an int or a size like
            ``"8GB"``; ``"auto"``: half of its file system, within its free space (see
            :func:`_auto_limit`).

    Returns:
        The plan, or None when the cache is off or not even one shard fits.

    Raises:
        UsageError: a bad ``cache`` or ``limit``, or a folder given explicitly that cannot be
            created or written.
    """
    fixed = check_decoded_args(cache, limit)
    if cache is None or cache is False:
        return None
    if cache is True or cache == "auto":
        places, explicit = auto_places(), False
    else:
        places, explicit = [os.fspath(cache)], True
    sizes = [entry_bytes(s.samples, size) if s.samples > 0 else 0 for s in shards]
    need = sum(sizes)
    best: tuple[int, str] | None = None
    for place in places:
        root = _prepare(place)
        if root is None:
            if explicit:
                raise UsageError(f"decoded_cache {place}: cannot create or write this folder")
            continue
        lim = fixed if fixed is not None else _auto_limit(root)
        if best is None or lim > best[0]:
            best = (lim, root)
        if lim >= need:
            best = (lim, root)
            break
    if best is None:
        return None
    lim, root = best
    chosen, used = [], 0
    for i, b in enumerate(sizes):
        if used + b > lim:
            break
        used += b
        chosen.append(i)
    if not chosen:
        return None
    _evict(root, {entry_name(shards[i], size, classes): sizes[i] for i in chosen}, lim)
    return DecodedConfig(root=root, shards=frozenset(chosen), limit=lim)
