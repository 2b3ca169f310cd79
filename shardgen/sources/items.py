"""The typed records of the scan: one :class:`Item` per input image, one :class:`Skip`
per input not used (with the reason, a line of ``skipped.jsonl``), the :class:`ScanResult`
every source gives, and :func:`group_of` (a ``--group`` regex applied to a path)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..format import path_fields

__all__ = ["Item", "Skip", "ScanResult", "group_of"]


@dataclass(frozen=True)
class Item:
    """One input image.

    Attributes:
        relpath: ``/``-separated path relative to the scan root (str; undecodable bytes
            of a file name are surrogate-escaped, as ``os.listdir`` gives them).
        label: class name.
        split: split of a pre-split source, else None.
        group: ``--group`` / index group id, else None.
        keypath: the path the sample key is made from (``relpath`` without the Kaggle
            ``images`` component); None means ``relpath``.
        labels: multi-label builds only: the sample's class names (sorted; empty for the
            ``--no_finding`` value), and ``label`` is their canonical text; else None.
    """

    relpath: str
    label: str
    split: str | None = None
    group: str | None = None
    keypath: str | None = None
    labels: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Skip:
    """An input that was not used, and why (one line of ``skipped.jsonl``)."""

    path: str
    reason: str

    def to_json(self) -> dict:
        return dict(path_fields(self.path, "path"), reason=self.reason)

@dataclass
class ScanResult:
    """What the scan found.

    Attributes:
        layout: ``kaggle``, ``split``, ``imagefolder`` or ``index``.
        items: every image found, sorted by relpath.
        skipped: files found but not used, with reasons.
        labels: every class found (sorted), including classes whose folders hold no image.
        splits: split names of a pre-split source, else None.
        root: the folder relpaths are relative to (SRC, or the one folder inside it).
        notes: one-line notes for the user (wrapper folder used, symlink loops, ...).
        class_dirs: label -> the folders it came from (relative to ``root``).
        single_reason: why the source has one class, when it has one.
        multilabel: the items carry label sets (``--label_sep``); ``labels`` are the findings.
        doubts: one-line notes that the build is probably not what was meant (classes that look
            like patient folders, a ``--no_finding`` that matches nothing); ``--strict`` refuses them.
    """

    layout: str
    items: Sequence[Item]
    skipped: list[Skip]
    labels: list[str]
    splits: list[str] | None
    root: str = ""
    notes: list[str] = field(default_factory=list)
    class_dirs: dict[str, list[str]] = field(default_factory=dict)
    single_reason: str = ""
    multilabel: bool = False
    doubts: list[str] = field(default_factory=list)
    #: how the conversion reads SRC's files when the scan needs its own reader (archives), else None
    reader: Any = None


def group_of(regex: re.Pattern | None, relpath: str) -> str | None:
    """The group id ``regex`` finds in ``relpath``: its first capture group, else the whole match;
    None without a regex or a match."""
    if regex is None:
        return None
    m = regex.search(relpath)
    if not m:
        return None
    return m.group(1) if m.groups() else m.group(0)
