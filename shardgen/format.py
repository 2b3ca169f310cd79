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
``<key>.json`` (``class``, ``source``, ``width``, ``height``, ``mode`` of the original, and
``pixels``).

Pixel digests (independent of how the PNG is compressed):

* ``pixels`` of a sample: xxh64 (16 lowercase hex digits) of its decoded pixels, the
  ``size * size`` bytes of the 8-bit image in row-major order (what PIL's ``tobytes()``
  gives for the decoded mode ``L`` image).
* ``pixels_xxh64`` of a shard: xxh64 of the concatenation, over the shard's samples in
  shard order, of the UTF-8 bytes ``f"{key}\\x00{pixels}\\n"`` (see :func:`shard_pixels_xxh64`).
  Two shards with the same ``pixels_xxh64`` hold the same keys, in the same order, with
  the same pixels; labels are not part of it (they are in ``dataset.json``).

Both were added after the first shardgen/1 builds: readers must accept builds without them.

``manifest.json``::

    {"format": "shardgen/1",
     "classes": [...],
     "image": {"size": 256, "mode": "L", "ext": "png"},
     "splits": {"train": {"samples": N, "class_counts": {cls: n},
                          "shards": [{"path": "train/train-000000.tar",
                                      "samples": n, "bytes": b, "xxh64": "hex",
                                      "pixels_xxh64": "hex"}]}},
     "skipped": K,
     "report": {...},
     "config": {...}}
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Any, Iterable

import xxhash

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
    "shard_pixels_xxh64",
    "dump_json",
    "atomic_write_bytes",
    "atomic_write_json",
    "validate_manifest",
    "path_fields",
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


def shard_pixels_xxh64(samples: Iterable[tuple[str, str]]) -> str:
    """A shard's ``pixels_xxh64`` from its ``(key, pixels)`` pairs in shard order (see above)."""
    h = xxhash.xxh64()
    for key, pixels in samples:
        h.update(f"{key}\x00{pixels}\n".encode("utf-8"))
    return h.hexdigest()


def dump_json(obj: Any, *, indent: int | None = 1) -> bytes:
    """Canonical JSON bytes (sorted keys where the format does not fix the order)."""
    return (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")


def path_fields(path: str, name: str) -> dict[str, str]:
    """A source path as JSON fields: ``{name: text}``, plus ``{name}_raw`` when the path is not UTF-8.

    File names are bytes; JSON holds text. A path that is valid UTF-8 is written as it is.
    Otherwise ``name`` shows it with each undecodable byte as ``\\xNN`` (readable, lossy) and
    ``name + "_raw"`` holds the exact bytes percent-encoded (RFC 3986, ``/`` kept):
    ``urllib.parse.unquote_to_bytes(value)`` gives them back.
    """
    raw = path.encode("utf-8", "surrogateescape")
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        from urllib.parse import quote_from_bytes

        return {name: raw.decode("utf-8", "backslashreplace"), f"{name}_raw": quote_from_bytes(raw, safe="/")}


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
