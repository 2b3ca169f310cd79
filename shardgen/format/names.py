"""Paths and names of a build folder (``docs/format.md``, "Layout")."""

from __future__ import annotations

import re

from .atomic import TMP_PREFIX

__all__ = ["FORMAT", "MANIFEST", "CLASSES", "SKIPPED", "DUPLICATES", "DATASET_JSON", "DATASET_CARD",
           "WIDS_SUFFIX", "WORK_DIR", "KEY_RE", "SPLIT_RE", "OWN_FILES", "shard_name", "shard_relpath", "wids_index_name",
           "is_own_top", "is_own_split_file"]

FORMAT = "shardgen/1"
MANIFEST = "manifest.json"
CLASSES = "classes.json"
SKIPPED = "skipped.jsonl"
DUPLICATES = "duplicates.jsonl"
DATASET_JSON = "dataset.json"
#: The dataset card Hugging Face ``datasets`` reads (``OUT/README.md``).
DATASET_CARD = "README.md"
#: Suffix of a split's wids shard index: ``OUT/<split>/<split>.wids.json``.
WIDS_SUFFIX = ".wids.json"
#: Scratch folder inside OUT holding a build in progress (removed when the build completes).
WORK_DIR = ".shardgen-work"
KEY_RE = re.compile(r"^[A-Za-z0-9_-]+$")
SPLIT_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def shard_name(split: str, index: int) -> str:
    """File name of shard ``index`` of ``split``: ``<split>-000000.tar``."""
    return f"{split}-{index:06d}.tar"


def shard_relpath(split: str, index: int) -> str:
    """Path of a shard relative to OUT, always with ``/``."""
    return f"{split}/{shard_name(split, index)}"


def wids_index_name(split: str) -> str:
    """File name of a split's wids shard index, inside the split folder: ``<split>.wids.json``."""
    return f"{split}{WIDS_SUFFIX}"


#: The names a build writes at the top of OUT, besides its split folders and temporaries.
OWN_FILES = frozenset({MANIFEST, CLASSES, SKIPPED, DUPLICATES, DATASET_CARD, WORK_DIR})


def is_own_top(name: str) -> bool:
    """Whether an entry at the top of OUT named ``name`` is one a build writes (other than a
    split folder): a metadata file, the work folder, or a temporary (``.tmp-`` prefix)."""
    return name in OWN_FILES or name.startswith(TMP_PREFIX)


def is_own_split_file(split: str, name: str) -> bool:
    """Whether a file named ``name`` directly inside split folder ``split`` is one a build
    writes: a shard ``<split>-NNNNNN.tar``, ``dataset.json``, the wids index or a temporary."""
    return (bool(re.match(rf"^{re.escape(split)}-\d{{6}}\.tar$", name))
            or name in (DATASET_JSON, wids_index_name(split)) or name.startswith(TMP_PREFIX))
