"""The on-disk format of a shardgen build ("shardgen/1").

Layout of an output folder ``OUT``::

    OUT/manifest.json                 written last; see below
    OUT/classes.json                  {"classes": [...]}   (index = position)
    OUT/skipped.jsonl                 {"path", "reason"} per skipped input
    OUT/duplicates.jsonl              exact-duplicate groups (same pixels after conversion)
    OUT/<split>/<split>-000000.tar    WebDataset shards
    OUT/<split>/dataset.json          StyleGAN2-ADA labels {"labels": [["<key>.png", idx], ...]}
    OUT/<split>/<split>.wids.json     wids shard index (shard URLs relative to it, sample counts)
    OUT/README.md                     dataset card: Hugging Face ``datasets`` config and a summary

``README.md`` and the wids indexes are derived from the manifest (see :mod:`shardgen.readers`);
they are rewritten by every build and are not listed in the manifest.

Each sample in a shard is three tar members sharing a key (``[A-Za-z0-9_-]``):
``<key>.png`` (8-bit grayscale PNG), ``<key>.cls`` (ASCII decimal class index) and
``<key>.json`` (``class``, ``source``, ``width``, ``height``, ``mode`` of the original).

``manifest.json``::

    {"format": "shardgen/1",
     "classes": [...],
     "image": {"size": 256, "mode": "L", "ext": "png"},
     "splits": {"train": {"samples": N, "class_counts": {cls: n},
                          "shards": [{"path": "train/train-000000.tar",
                                      "samples": n, "bytes": b, "xxh64": "hex"}]}},
     "skipped": K,
     "report": {...},
     "config": {...}}
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any

__all__ = [
    "FORMAT",
    "MANIFEST",
    "CLASSES",
    "SKIPPED",
    "DUPLICATES",
    "DATASET_JSON",
    "DATASET_CARD",
    "wids_index_name",
    "WORK_DIR",
    "KEY_RE",
    "shard_name",
    "shard_relpath",
    "dump_json",
    "atomic_write_bytes",
    "atomic_write_json",
    "validate_manifest",
]

FORMAT = "shardgen/1"
MANIFEST = "manifest.json"
CLASSES = "classes.json"
SKIPPED = "skipped.jsonl"
DUPLICATES = "duplicates.jsonl"
DATASET_JSON = "dataset.json"
#: Dataset card at the top of OUT: YAML front matter that Hugging Face ``datasets`` reads, then a summary.
DATASET_CARD = "README.md"
#: Suffix of each split's wids shard index, ``OUT/<split>/<split>.wids.json``.
WIDS_SUFFIX = ".wids.json"
#: Scratch folder inside OUT holding a build in progress (removed when the build completes).
WORK_DIR = ".shardgen-work"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``<split>-000000.tar``."""
    return f"{split}-{index:06d}.tar"


def wids_index_name(split: str) -> str:
    """File name of the wids shard index of ``split`` (in the split's folder): ``<split>.wids.json``."""
    return f"{split}{WIDS_SUFFIX}"


def shard_relpath(split: str, index: int) -> str:
    """Path of a shard relative to OUT, always with ``/``."""
    return f"{split}/{shard_name(split, index)}"


def dump_json(obj: Any, *, indent: int | None = 1) -> bytes:
    """Canonical JSON bytes (sorted keys where the format does not fix the order)."""
    return (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_bytes(path: str, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync and rename.

    ``fsync=False`` skips the flush to disk (for scratch files that are checksummed anyway).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as canonical JSON."""
    atomic_write_bytes(path, dump_json(obj))


def validate_manifest(m: Any) -> list[str]:
    """Return a list of structural problems with a parsed manifest (empty when valid)."""
    problems: list[str] = []
    if not isinstance(m, dict):
        return ["manifest is not a JSON object"]
    if m.get("format") != FORMAT:
        problems.append(f"unknown format {m.get('format')!r} (expected {FORMAT!r})")
    classes = m.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        problems.append("'classes' must be a non-empty list of names")
    image = m.get("image")
    if not isinstance(image, dict) or not isinstance(image.get("size"), int):
        problems.append("'image' must hold an integer 'size'")
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits:
        problems.append("'splits' must be a non-empty object")
        return problems
    for name, s in splits.items():
        if not SPLIT_RE.match(str(name)):
            problems.append(f"bad split name {name!r}")
        if not isinstance(s, dict) or not isinstance(s.get("shards"), list):
            problems.append(f"split {name!r} has no 'shards' list")
            continue
        for sh in s["shards"]:
            if not isinstance(sh, dict) or not all(k in sh for k in ("path", "samples", "bytes", "xxh64")):
                problems.append(f"split {name!r} has a shard entry without path/samples/bytes/xxh64")
                break
    return problems
