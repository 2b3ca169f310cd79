"""A node-local cache of decoded samples (``make_loader(decoded_cache=...)``).

Decoding PNG is what bounds a loader's speed. Training reads the same samples every
epoch, so each sample is decoded once per node and later epochs copy its pixels out
of a memory-mapped file instead (a ``memcpy`` into the batch slot).

**Layout.** One file per shard, ``<xxh64>-<bytes>-<S>px-<C>c.dec`` (the shard's
checksum and size from the manifest, the image side and the class count), so a
rebuilt split (new checksums) never meets an old file and builds that share a shard
share its entry. Entries filled by a loader with ``verify=False`` (shard bytes not
checked against the manifest) are named ``...c.unverified.dec``: a verifying loader
never reads them. The file itself (header, samples with their checksums, the fill
protocol) is :mod:`loaders.read.decoded.entry`.

**Where.** The folder is private (:mod:`loaders.read.private`): checked when the loader
is made (:mod:`loaders.read.decoded.place`) and again, on an ``O_NOFOLLOW`` descriptor, in
every process that uses it; every file is created and opened relative to that
descriptor (``openat``), by a name made of the manifest's checked hex checksum and
numbers only, so no path leaves the folder. Temporary files are created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` under a random name, entries are opened with
``O_NOFOLLOW``.

**Trust.** The header records the shard bytes an entry was filled from (the
manifest's ``xxh64`` and ``bytes``, and whether they were verified); a file whose header
or size says otherwise (another format, another shard, a symbolic link) is replaced by
a new, empty entry, never read. Each sample's checksum is checked the first time a
process copies it (:class:`~loaders.read.decoded.entry.DecodedEntry`).

**Stale data.** For a local build, the entry also records the identity (device, inode,
size, mtime) of the shard file it is filled from; a process whose shard file has another
identity (a copy of the build, a shard rewritten since) checks the file's xxh64 against
the manifest before using the entry, and decodes from the shard instead on a mismatch.

**Budget.** The shards cached are the longest prefix of the manifest's order whose
entries fit in the limit, so every rank and worker makes the same choice without
talking; the rest is decoded every epoch. Older entries of other splits are evicted,
least recently used first, to keep the folder within the limit (under an ``flock``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shardgen.format.checksum import file_xxh64
from shardgen.format.validate import is_hex16

from .entry import DecodedEntry, entry_bytes, entry_head, label_bytes
from ..private import open_private_dir

if TYPE_CHECKING:
    from shardgen.format import ShardEntry

__all__ = ["DecodedConfig", "DecodedStore", "entry_name"]

log = logging.getLogger("loaders")


def entry_name(shard: ShardEntry, size: int, classes: int, multilabel: bool = False, verified: bool = True) -> str:
    """The file name of a shard's entry (checksum, bytes, image side, class count, ``m``
    instead of ``c`` for multi-hot targets, ``.unverified`` for ``verify=False``).

    Raises:
        ValueError: the shard's checksum is not 16 hex digits or a number is not an int
            (nothing from a manifest reaches a path unchecked).
    """
    ints = (shard.bytes, size, classes)
    if not is_hex16(shard.xxh64) or not all(type(v) is int and v >= 0 for v in ints):
        raise ValueError(f"shard {shard.path!r}: no decoded-cache name for xxh64 {shard.xxh64!r}")
    name = f"{shard.xxh64}-{shard.bytes}-{size}px-{classes}{'m' if multilabel else 'c'}"
    return name + (".dec" if verified else ".unverified.dec")


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
        config: the plan made by :func:`loaders.read.decoded.place.plan_decoded`.
        shards: the split's shards (manifest order).
        size: side of the square images in pixels.
        classes: number of classes.
        local_root: the build's folder when it is local (for the stale-data check).
        multilabel: the targets are multi-hot vectors.
        verified: samples come only from shards whose bytes matched the manifest (the
            loader's ``verify``); False keeps its entries apart (``.unverified.dec``).
    """

    config: DecodedConfig
    shards: list
    size: int
    classes: int
    local_root: str | None
    multilabel: bool = False
    verified: bool = True
    _open: dict = field(default_factory=dict)
    _dir: int | None = None
    _refused: str | None = None

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
                if self._refused is None:
                    log.warning("decoded cache: shard %d not cached: %s", index, err)
        self._open[index] = e
        return e

    def _folder(self) -> int:
        """This process's descriptor of the cache folder, checked private (every process).

        Raises:
            OSError: it is not private or cannot be opened (said once per process: every
                shard is then decoded, not cached).
        """
        if self._dir is None:
            if self._refused is not None:
                raise OSError(self._refused)
            try:
                self._dir = open_private_dir(self.config.root)
            except OSError as e:
                self._refused = f"{self.config.root}: {e.strerror or e}"
                log.warning("decoded cache %s: not used in this process", self._refused)
                raise
        return self._dir

    def _fields(self, shard: ShardEntry) -> dict:
        return {"format": 2, "n": shard.samples, "size": self.size, "classes": self.classes,
                "multilabel": self.multilabel, "xxh64": shard.xxh64, "bytes": shard.bytes, "verified": self.verified}

    def _get(self, index: int) -> DecodedEntry | None:
        shard = self.shards[index]
        name = entry_name(shard, self.size, self.classes, self.multilabel, self.verified)
        src = None if self.local_root is None else os.path.join(self.local_root, shard.path)
        ident = None if src is None else _identity(src)
        if src is not None and ident is None:
            return None  # missing shard: reading it raises the usual error
        e = self._open_entry(name, shard, ident)
        # Filled from another file (a copy of the build, a shard rewritten since): only if
        # this one holds the manifest's bytes.
        if src is not None and e.header().get("source") != ident and _file_xxh64(src) != shard.xxh64:
            e.close()
            return None
        os.utime(e.fd)
        return e

    def _open_entry(self, name: str, shard: ShardEntry, ident: list[int] | None) -> DecodedEntry:
        """Open entry ``name``, creating it if missing; a file that is not this shard's entry
        (another format or shard, a symbolic link, a wrong size) is replaced by a new one."""
        folder, want = self._folder(), self._fields(shard)
        path = os.path.join(self.config.root, name)
        for attempt in range(3):
            try:
                os.stat(name, dir_fd=folder, follow_symlinks=False)
            except FileNotFoundError:
                self._create(name, want, ident, replace=False)
            try:
                e = DecodedEntry(path, shard.samples, self.size, self.classes if self.multilabel else 0,
                                 classes=self.classes, seed=int(shard.xxh64, 16), dir_fd=folder)
            except FileNotFoundError:
                continue  # evicted meanwhile
            except (OSError, ValueError) as err:
                why = str(err)
            else:
                try:
                    head = e.header()
                    why = None if {k: head.get(k) for k in want} == want else "its header names other shard bytes"
                except ValueError as err:
                    why = str(err)
                if why is None:
                    return e
                e.close()
            if attempt == 2:
                break
            log.info("decoded cache: %s is not this shard's entry (%s): replaced by a new one", path, why)
            self._create(name, want, ident, replace=True)
        raise ValueError(f"{path}: cannot make a decoded-cache entry there")

    def _create(self, name: str, fields: dict, ident: list[int] | None, replace: bool) -> None:
        """Make entry ``name`` whole: a temporary file (``O_EXCL | O_NOFOLLOW``, random name)
        with its header, at its full size (sparse), then ``link`` (an entry another process
        made first wins) or, with ``replace``, ``rename`` over what is there."""
        folder = self._folder()
        end = entry_bytes(fields["n"], self.size, label_bytes(self.classes, self.multilabel))
        head = entry_head(dict(fields, source=ident))
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            tmp = f".tmp-{socket.gethostname()[:64]}-{os.getpid()}-{secrets.token_hex(6)}.dec"
            try:
                fd = os.open(tmp, flags, 0o600, dir_fd=folder)
                break
            except FileExistsError:
                continue
        try:
            os.ftruncate(fd, end)
            if os.pwrite(fd, head, 0) != len(head):
                raise OSError("short write")
            os.close(fd)
            fd = -1
            if replace:
                os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
            else:
                try:
                    os.link(tmp, name, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
                except FileExistsError:
                    pass  # atomic; an entry someone else created first wins
        finally:
            if fd >= 0:
                os.close(fd)
            try:
                os.unlink(tmp, dir_fd=folder)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        for e in self._open.values():
            if e is not None:
                e.close()
        self._open.clear()
        if self._dir is not None:
            os.close(self._dir)
            self._dir = None
