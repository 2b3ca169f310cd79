"""The split a worker reads: :class:`Spec`, opened from the manifest by :func:`open_split`.

A :class:`Spec` holds everything a DataLoader worker needs to read one split (the
build's URL and storage options, the manifest's shards, classes and image size, the
options of the read) as plain picklable data: every process opens its own remote
filesystem and decoded cache from it, never one inherited from its parent.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import xxhash

from shardgen.format import DATASET_JSON, ShardEntry
from shardgen.redact import redact
from shardgen.storage import DEFAULT_TIMEOUT_S, check_timeout, filesystem, open_build, read_dataset_json

from ..errors import UsageError
from .args import as_bool, as_int, check_on_error, parse_size
from .decoded.store import DecodedStore
from .shards.cache import cache_root
from .shards.sources import DEFAULT_CHUNK
from .targets import Targets

__all__ = ["Spec", "open_split", "split_labels"]

log = logging.getLogger("loaders")


@dataclass
class Spec:
    """Everything a worker needs to read one split (picklable; no open handles)."""

    root: str                      # build folder or URL, for messages
    local_root: str | None         # filesystem path when the build is local
    storage_options: dict[str, Any]
    split: str
    shards: list[ShardEntry]
    classes: list[str]
    size: int
    on_error: str = "raise"
    cache_dir: str | None = None
    cache_limit: int = 0
    retries: int = 5
    chunk_size: int = DEFAULT_CHUNK
    timeout: float | None = 30.0   # connect/read timeout of each remote request, seconds
    labels: Any = None             # class index per sample (int32, split order); loaded for balance
    multilabel: bool = False       # multi-hot targets (manifest task "multilabel")
    _fs: Any = field(default=None, repr=False, compare=False)
    _fs_pid: int = field(default=-1, repr=False, compare=False)
    _keys: Any = field(default=None, repr=False, compare=False)
    _split_id: str | None = field(default=None, repr=False, compare=False)
    decoded: Any = None            # a loaders.read.decoded.store.DecodedConfig: the decoded cache (None: off)
    _store: Any = field(default=None, repr=False, compare=False)
    verify: bool = True            # no sample of a shard is yielded before its size and xxh64 match (unsafe off)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_fs"], d["_fs_pid"], d["_keys"], d["_store"] = None, -1, None, None
        return d

    def decoded_store(self):
        """This process's :class:`loaders.read.decoded.store.DecodedStore` (None when the cache is off)."""
        if self.decoded is None:
            return None
        if self._store is None or self._store[0] != os.getpid():
            self._store = (os.getpid(), DecodedStore(self.decoded, self.shards, self.size, len(self.classes),
                                                     self.local_root, self.multilabel, self.verify))
        return self._store[1]

    def shard_keys(self, index: int) -> dict[str, int] | None:
        """``{key: position in shard}`` for shard ``index``, from ``<split>/dataset.json``
        (which lists the split's samples in shard order); None if that is unavailable."""
        if self._keys is None:
            self._keys = False
            try:
                fs, base = self.remote_fs()
                labels = read_dataset_json(fs, f"{base.rstrip('/')}/{self.split}/{DATASET_JSON}")
                keys = [key for key, _ in labels]
                if len(keys) == sum(s.samples for s in self.shards):
                    out, pos = [], 0
                    for s in self.shards:
                        out.append({k: i for i, k in enumerate(keys[pos:pos + s.samples])})
                        pos += s.samples
                    self._keys = out
            except Exception as e:  # an optimisation only: read from the start instead
                log.info("%s", redact(f"{self.root}: no sample index ({e}); shards are read from their start"))
        return self._keys[index] if self._keys else None

    def split_xxh64(self) -> str:
        """xxh64 of the split's shard list (path, samples, checksum) from the manifest:
        identifies the split's content, wherever the build is read from."""
        if self._split_id is None:
            h = xxhash.xxh64()
            for s in self.shards:
                h.update(f"{s.path}\0{s.samples}\0{s.xxh64}\n".encode())
            self._split_id = h.hexdigest()
        return self._split_id

    @property
    def targets(self) -> Targets:
        """What this split's targets are (class indices or multi-hot vectors)."""
        return Targets(len(self.classes), self.multilabel)

    def shard_name(self, shard: ShardEntry) -> str:
        """The shard's URL or path for messages and logs (credentials and signatures redacted)."""
        return redact(self.root.rstrip("/") + "/" + shard.path)

    def remote_fs(self):
        """This process's fsspec filesystem and the build's path in it (opened on first use
        in each process: a worker never uses a filesystem inherited from its parent)."""
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs = filesystem(self.root, self.storage_options, timeout=self.timeout)
            self._fs_pid = os.getpid()
        return self._fs


def split_labels(spec: Spec) -> np.ndarray:
    """Class index of every sample of ``spec``'s split (``int32 [N]``, shard order), or of a
    multi-label build its multi-hot targets (``uint8 [N, C]``), from ``<split>/dataset.json``.

    Raises:
        UsageError: missing, unreadable or not matching the manifest.
    """
    name = redact(f"{spec.root.rstrip('/')}/{spec.split}/{DATASET_JSON}")
    try:
        fs, base = spec.remote_fs()
        labels = read_dataset_json(fs, f"{base.rstrip('/')}/{spec.split}/{DATASET_JSON}")
    except Exception as e:
        raise UsageError(f"{name}: cannot read the labels: {type(e).__name__}: {e}") from None
    if len(labels) != sum(s.samples for s in spec.shards):
        raise UsageError(f"{name}: lists {len(labels)} samples, the manifest {sum(s.samples for s in spec.shards)}")
    if not spec.multilabel:
        return np.asarray([c for _, c in labels], dtype=np.int32)
    hot = np.zeros((len(labels), len(spec.classes)), dtype=np.uint8)
    for i, (_, on) in enumerate(labels):
        hot[i, list(on)] = 1
    return hot


def open_split(source: Any, split: str, storage_options: dict | None = None, on_error: str = "raise",
               cache_dir: str | None = None, cache_limit: Any = "10GB", retries: int = 5,
               chunk_size: int = DEFAULT_CHUNK, io_timeout: float | None = DEFAULT_TIMEOUT_S,
               verify: bool = True) -> Spec:
    """Read the manifest of ``source`` and describe ``split`` for the workers.

    ``io_timeout``: connect and read timeout of each remote request, in seconds;
    ``verify``: check every shard against the manifest before yielding its samples (see
    :func:`make_loader`).

    Raises:
        UsageError: no manifest (or no answer within ``io_timeout``), no such split, an
            empty split, or shards that are not PNG.
    """
    io_timeout = check_timeout(io_timeout, "io_timeout")
    build = open_build(str(source), storage_options, timeout=io_timeout)
    info = build.split(str(split))
    image = build.manifest.image
    if image.ext != "png" or image.mode != "L":
        raise UsageError(f"{redact(build.root)}: the loaders read 8-bit grayscale PNG shards; this build holds "
                         f"{image.mode} {image.ext}")
    shards = list(info.shards)
    if sum(s.samples for s in shards) == 0:
        raise UsageError(f"{redact(build.root)}: split {split!r} holds no samples")
    local = isinstance(build.fs, fsspec.implementations.local.LocalFileSystem)
    if cache_dir is not None and not local:
        cache_root(cache_dir)  # a one-line UsageError now, not in a worker: created 0700, the user's own
    return Spec(
        root=build.root, local_root=build.path if local else None,
        storage_options=dict(storage_options or {}), split=str(split), shards=shards,
        classes=build.classes, size=image.size, on_error=check_on_error(on_error),
        cache_dir=None if cache_dir is None else str(cache_dir),
        cache_limit=parse_size(cache_limit) if cache_dir is not None else 0,
        retries=as_int(retries, "retries", 0), chunk_size=as_int(chunk_size, "chunk_size", 4096),
        timeout=io_timeout, multilabel=build.manifest.multilabel, verify=as_bool(verify, "verify"),
    )
