"""``--split_lists train=FILE,test=FILE``: official split files decide each image's split.

A list file holds one entry per line (UTF-8, blank lines ignored): a file name
(``00000001_000.png``, matched against the base names of the index's images) or a path
relative to SRC (``images_001/images/00000001_000.png``, matched against the index's
resolved paths). Every image of the index that a list names goes in that list's split;
an image of the index that no list names is skipped with a reason (``skipped.jsonl``).
Entries that name no image of the index (a subset of the corpus was indexed) are counted
in a note, and so are groups (``group`` column or ``--group``) that the lists put in more
than one split: the lists are official, so they win, but that is patient leakage. An
image named twice, in one list or in two, is a usage error naming both lines, as is a
bare name that two images of the index share.
"""

from __future__ import annotations

import posixpath
from dataclasses import replace
from typing import Sequence

from .errors import UsageError
from .scan import Item, Skip

__all__ = ["NOT_LISTED", "read_list", "apply_split_lists"]

#: The skip reason of an index image that no split list names.
NOT_LISTED = "in no --split_lists file"


def read_list(path: str) -> list[tuple[int, str]]:
    """``[(line number, entry), ...]`` of one list file (blank lines left out).

    Raises:
        UsageError: the file cannot be read as UTF-8 text.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise UsageError(f"--split_lists {path}: cannot open ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"--split_lists {path}: not UTF-8 text ({e})") from None
    out = []
    for n, line in enumerate(lines, start=1):
        entry = line.strip()
        if entry:
            out.append((n, posixpath.normpath(entry.replace("\\", "/")).lstrip("/")))
    return out


def _by_name(items: Sequence[Item]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for it in items:
        out.setdefault(posixpath.basename(it.relpath), []).append(it.relpath)
    return out


def _match(entry: str, by_path: set[str], by_name: dict[str, list[str]], where: str) -> str | None:
    """The index path an entry names, or None when it names no image of the index."""
    if "/" in entry:
        return entry if entry in by_path else None
    found = by_name.get(entry, [])
    if len(found) > 1:
        raise UsageError(f"{where}: {entry} is ambiguous: the index has {found[0]} and {found[1]}")
    return found[0] if found else None


def apply_split_lists(items: Sequence[Item], lists: Sequence[tuple[str, str]]
                      ) -> tuple[list[Item], list[Skip], list[str]]:
    """Give each listed image its split.

    Args:
        items: the index's images, sorted by path.
        lists: ``(split, file)`` pairs, in the order given.

    Returns:
        ``(items with their split, in the same order; skips of the unlisted; notes)``.

    Raises:
        UsageError: an unreadable list, an image listed twice (one list or two), or an
            ambiguous bare name.
    """
    by_path = {it.relpath for it in items}
    by_name = _by_name(items)
    split_of: dict[str, str] = {}
    first: dict[str, str] = {}
    unknown = 0
    for split, path in lists:
        for n, entry in read_list(path):
            where = f"--split_lists {path}: line {n}"
            rel = _match(entry, by_path, by_name, where)
            ident = rel if rel is not None else "?" + entry
            if ident in first:
                raise UsageError(f"{where}: {entry} is listed twice (also {first[ident]})")
            first[ident] = f"{path} line {n}"
            if rel is None:
                unknown += 1
            else:
                split_of[rel] = split
    out = [replace(it, split=split_of[it.relpath]) for it in items if it.relpath in split_of]
    skips = [Skip(it.relpath, NOT_LISTED) for it in items if it.relpath not in split_of]
    notes = [f"--split_lists: {unknown} listed file(s) are not in the index: ignored"] if unknown else []
    if skips:
        notes.append(f"--split_lists: {len(skips)} image(s) of the index are in no list: skipped "
                     "(see skipped.jsonl)")
    spans: dict[str, set[str]] = {}
    for it in out:
        if it.group is not None:
            spans.setdefault(it.group, set()).add(it.split or "")
    crossing = sorted(g for g, s in spans.items() if len(s) > 1)
    if crossing:
        notes.append(f"--split_lists: {len(crossing)} group(s) are in more than one split as the lists give "
                     f"them (e.g. {crossing[0]!r}): the same patient in two splits leaks between them")
    return out, skips, notes
