"""Opening a split for the loaders: the manifest (and, for ``balance``, the labels) into
the picklable :class:`~loaders.read.samples.Spec` every worker reads from."""

from __future__ import annotations

from typing import Any

import fsspec
import numpy as np

from shardgen.format import DATASET_JSON
from shardgen.redact import redact
from shardgen.storage import DEFAULT_TIMEOUT_S, check_timeout, open_build, read_dataset_json

from ..errors import UsageError
from .shards.cache import cache_root
from .shards.sources import DEFAULT_CHUNK, parse_size
from .samples import Spec, check_on_error

__all__ = ["open_split", "split_labels", "as_int"]


def as_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, got {value}")
    return value


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
        timeout=io_timeout, multilabel=build.manifest.multilabel, verify=_as_bool(verify, "verify"),
    )


def _as_bool(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False, got {value!r}")
    return value


