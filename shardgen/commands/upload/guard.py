"""Whose files are at an upload's destination, and the record that makes an unfinished upload ours.

An upload writes :data:`MARKER` (``.shardgen-upload.json``: the xxh64 of the manifest being
uploaded, and who started it) before anything else whenever the destination does not already
hold that very manifest, and deletes it after ``manifest.json`` is in place. So a prefix
without a manifest is one of:

- empty (or only the temporary files of a killed upload into a folder): upload;
- holding a marker for *this* build: an interrupted run of the same upload, resumed;
- holding a marker for *another* build: someone else's unfinished upload -- refused unless
  ``overwrite``;
- holding any other file: not a shardgen build (someone else's data, or an upload made by a
  shardgen without markers) -- refused unless ``overwrite``, since the upload would write over
  any file that has one of the build's names (``README.md``, ``train/train-000000.tar`` ...).

With ``overwrite`` over another build, that build's ``manifest.json`` and then its per-split
indexes (``<split>/dataset.json``, ``<split>/<split>.wids.json``, which name its shards) are
deleted before the first shard is sent, so that no reader opens the old build over new shards.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable

import xxhash

from ...build.lock import MAX_RECORD, Holder
from ...errors import UsageError
from ...format import DATASET_JSON, MANIFEST, WIDS_SUFFIX
from ...format.validate import shown
from .dest import TMP_RE

__all__ = ["MARKER", "Decision", "decide", "marker_bytes", "index_files"]

#: The record of an upload in progress, at the destination's top.
MARKER = ".shardgen-upload.json"
_INDEX = re.compile(rf"^([^/]+)/(?:{re.escape(DATASET_JSON)}|\1{re.escape(WIDS_SUFFIX)})$")


@dataclass
class Decision:
    """What the upload does with the destination.

    Attributes:
        replace: another build is there: its manifest and indexes go first.
        mark: write :data:`MARKER` before anything else (and delete it at the end).
    """

    replace: bool
    mark: bool


def marker_bytes(manifest_bytes: bytes) -> bytes:
    """The marker for an upload of the build whose ``manifest.json`` is ``manifest_bytes``."""
    d = dict(vars(Holder.now()), manifest_xxh64=xxhash.xxh64_hexdigest(manifest_bytes))
    d.pop("token", None)
    d.pop("ttl_s", None)
    return json.dumps(d, sort_keys=True).encode() + b"\n"


def _marker_build(raw: bytes | None) -> tuple[str | None, Holder | None]:
    """(manifest xxh64, who) a marker names (Nones: unreadable)."""
    try:
        d = json.loads((raw or b"")[:MAX_RECORD])
        digest = d.get("manifest_xxh64")
    except (ValueError, AttributeError):
        return None, None
    return (digest if isinstance(digest, str) else None), Holder.parse(raw)


def index_files(existing: dict[str, int]) -> list[str]:
    """The per-split indexes of the build at the destination (they name its shards)."""
    return sorted(k for k in existing if _INDEX.match(k))


def decide(dest: str, existing: dict[str, int], manifest_bytes: bytes, overwrite: bool, local: bool,
           read: Callable[[str, int], Any]) -> Decision:
    """Check the destination's files against the build to send (module docstring).

    Args:
        dest: the destination as shown (no credentials).
        existing: ``{relpath: size}`` of its files.
        manifest_bytes: the build's ``manifest.json``.
        overwrite: ``--overwrite``.
        local: the destination is a folder (its upload temporaries are ours).
        read: ``read(rel, cap)``: the first ``cap`` bytes of a file there (None: gone).

    Raises:
        UsageError: another build, another upload or files that are not a shardgen build are
            there, without ``overwrite`` (exit code 2).
    """
    if MANIFEST in existing:
        same = existing[MANIFEST] == len(manifest_bytes) and read(MANIFEST, len(manifest_bytes) + 1) == manifest_bytes
        if same:
            return Decision(replace=False, mark=False)
        if not overwrite:
            raise UsageError(f"{dest} already holds a different build ({MANIFEST} differs); "
                             f"pass --overwrite to replace it")
        return Decision(replace=True, mark=True)
    others = sorted(k for k in existing if k != MARKER and not (local and TMP_RE.match(k.rsplit("/", 1)[-1])))
    if MARKER in existing:
        digest, who = _marker_build(read(MARKER, MAX_RECORD))
        if digest == xxhash.xxh64_hexdigest(manifest_bytes):
            return Decision(replace=False, mark=False)  # our own interrupted upload: resume it
        if not overwrite:
            by = f" (started by {who.describe(exited='that upload was interrupted')})" if who is not None else ""
            raise UsageError(f"{dest} holds an unfinished upload of another build{by}; pass --overwrite to "
                             "replace it")
        return Decision(replace=True, mark=True)
    if others and not overwrite:
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        names = ", ".join(shown(k, 60) for k in others[:3]) + more
        raise UsageError(f"{dest} holds files but no shardgen {MANIFEST} ({names}); pass --overwrite to upload "
                         "into it anyway (files with the build's names are replaced), or choose another prefix")
    return Decision(replace=bool(others), mark=True)
