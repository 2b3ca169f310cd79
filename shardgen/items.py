"""The typed records of the scan: one :class:`Item` per input image, one :class:`Skip`
per input not used (with the reason, a line of ``skipped.jsonl``)."""

from __future__ import annotations

from dataclasses import dataclass

from .format import path_fields

__all__ = ["Item", "Skip"]


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
