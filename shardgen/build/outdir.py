"""The state of OUT before and after a build: whose files are there, resume or start over.

shardgen only ever deletes files it wrote: OUT may hold nothing but a shardgen build
(finished or interrupted), else the build refuses to touch it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

from ..errors import UsageError
from ..format import MANIFEST, SPLIT_RE, TMP_PREFIX, WORK_DIR, CodecVersions, is_own_split_file, is_own_top
from ..imaging.codecs import check_same_codecs
from .lock import LOCK_FILE

__all__ = ["prepare_out", "decide", "clean_temporaries", "remove_stale", "is_own_split_dir", "remove_build"]

def is_own_split_dir(path: str, name: str) -> bool:
    """A split folder holding only shardgen files (shards, dataset.json, wids index, temporaries)."""
    try:
        entries = os.listdir(path)
    except OSError:
        return False
    return all(is_own_split_file(name, e) for e in entries)


def _foreign_entries(out: str) -> list[str]:
    foreign = []
    for e in sorted(os.listdir(out)):
        p = os.path.join(out, e)
        if is_own_top(e):
            continue
        if os.path.isdir(p) and SPLIT_RE.match(e) and is_own_split_dir(p, e):
            continue
        foreign.append(e)
    return foreign


def remove_build(out: str) -> None:
    """Delete the shardgen files in ``out`` (only those; callers checked for foreign files), all
    but the lock file the running build holds (``.shardgen-work/build.lock``, :mod:`shardgen.build.lock`):
    removing it would let a second build take OUT while this one replaces the old build."""
    for e in os.listdir(out):
        p = os.path.join(out, e)
        if e == WORK_DIR and os.path.isdir(p) and not os.path.islink(p):
            for w in os.listdir(p):
                q = os.path.join(p, w)
                if w == LOCK_FILE:
                    continue
                if os.path.isdir(q) and not os.path.islink(q):
                    shutil.rmtree(q)
                else:
                    os.unlink(q)
        elif os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def _config_diff(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


def _describe(k: str, old: dict, new: dict) -> str:
    return f"{k} (was {json.dumps(old.get(k))}, now {json.dumps(new.get(k))})"


def prepare_out(out: str, fingerprint: dict, overwrite: bool) -> str:
    """Check OUT and decide how to proceed: ``fresh``, ``resume`` or ``rebuild``.

    Raises:
        UsageError: OUT holds foreign files, or a build with another config (without ``overwrite``).
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError(f"OUT {out} exists and is not a folder")
    if not os.path.isdir(out) or not os.listdir(out):
        return "fresh"
    foreign = _foreign_entries(out)
    if foreign:
        shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
        raise UsageError(f"OUT {out} holds files that are not a shardgen build ({shown}); use an empty or new folder")
    work = os.path.join(out, WORK_DIR)
    old = None
    where = ""
    wcfg = os.path.join(work, "config.json")
    if os.path.exists(wcfg):
        try:
            with open(wcfg) as f:
                old = json.load(f)
            where = "an interrupted build"
        except (OSError, ValueError):
            old = None
    if old is None and os.path.exists(os.path.join(out, MANIFEST)):
        try:
            with open(os.path.join(out, MANIFEST)) as f:
                old = dict(json.load(f).get("config") or {})
            old["src"] = fingerprint.get("src")  # a finished build does not record where SRC was
            where = "a build"
        except (OSError, ValueError, AttributeError):
            old = None
    state = decide(out, old, where, fingerprint, overwrite)
    if state == "fresh":
        remove_build(out)
        return "fresh"
    return "resume" if os.path.isdir(work) else "rebuild"


def decide(out: str, old: dict | None, where: str, fingerprint: dict, overwrite: bool) -> str:
    """Whether a non-empty OUT holding ``old`` (its recorded config, None: only scraps) is kept
    (``"keep"``: resume or rebuild in place) or started over (``"fresh"``: the caller removes it).

    Raises:
        UsageError: other library versions or another config, without ``overwrite``.
    """
    if old is None:
        return "fresh"  # only scraps (e.g. killed before the config was written): start over
    if "codecs" not in old:
        # Made before the library versions were recorded: nothing to compare them with.
        old = dict(old, codecs=fingerprint.get("codecs"))
    if not overwrite:
        check_same_codecs(CodecVersions.parse(old.get("codecs")), CodecVersions.parse(fingerprint.get("codecs")),
                          f"OUT {out} holds {where} made with {{lib}} {{expected}}, but this machine has "
                          f"{{lib}} {{got}} (other libraries can give other bytes)", overwrite_hint=True)
    diff = _config_diff(old, fingerprint)
    if diff and not overwrite:
        raise UsageError(
            f"OUT {out} holds {where} made with a different config: "
            + "; ".join(_describe(k, old, fingerprint) for k in diff)
            + ". Use --overwrite to replace it"
        )
    return "fresh" if overwrite else "keep"


def clean_temporaries(out: str) -> None:
    for dirpath, _dirs, files in os.walk(out):
        for f in files:
            if f.startswith(TMP_PREFIX):
                try:
                    os.unlink(os.path.join(dirpath, f))
                except FileNotFoundError:
                    pass


def clean_temporaries_quietly(out: str) -> None:
    """:func:`clean_temporaries`, ignoring errors (the disk may be full or read-only)."""
    with contextlib.suppress(OSError):
        clean_temporaries(out)


def remove_stale(out: str, planned: set[str], split_names: list[str]) -> None:
    """Remove shards and split folders of an earlier, larger plan (``planned``: shard relpaths)."""
    for e in sorted(os.listdir(out)):
        p = os.path.join(out, e)
        if e == WORK_DIR or not os.path.isdir(p) or not is_own_split_dir(p, e):
            continue
        for f in os.listdir(p):
            if f.endswith(".tar") and f"{e}/{f}" not in planned:
                os.unlink(os.path.join(p, f))
        if e not in split_names:
            shutil.rmtree(p)
