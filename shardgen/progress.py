"""Progress bars on stderr, with the same settings for every command.

Bars are :class:`tqdm.tqdm` objects of a private subclass that never starts tqdm's
monitor thread (its ``monitor_interval`` is 0 on that subclass only; the user's own
tqdm bars keep theirs). The build and verify fork their worker pools while no thread
of ours runs; a monitor thread left over from an earlier bar (a disabled bar starts
one too) would break that promise.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["bar", "note"]

_BAR_CLASS: Any = None


def _bar_class() -> Any:
    """The tqdm subclass (created on first use, so importing shardgen does not import tqdm)."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        from tqdm import tqdm

        class Bar(tqdm):
            monitor_interval = 0  # this class only: no monitor thread for shardgen's bars

        _BAR_CLASS = Bar
    return _BAR_CLASS


def bar(total: int | None, desc: str, unit: str = "it", enabled: bool = True, *, byte_units: bool = False):
    """A progress bar on stderr that disappears when closed.

    Args:
        total: the count at 100 % (None: unknown).
        desc: the label, e.g. ``"convert"``.
        unit: what is counted, e.g. ``"img"`` (ignored with ``byte_units``).
        enabled: False gives a bar that draws nothing (``update`` still works).
        byte_units: count bytes, shown as KiB/MiB/... and B/s.

    Returns:
        A tqdm bar; use it as a context manager or call ``close()``. It redraws at most
        twice a second.
    """
    units: dict[str, Any] = {"unit": unit}
    if byte_units:
        units = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}
    return _bar_class()(total=total, desc=desc, file=sys.stderr, disable=not enabled, dynamic_ncols=True,
                        leave=False, mininterval=0.5, **units)


def note(msg: str) -> None:
    """One line on stderr that does not break a progress bar being drawn (secrets redacted,
    terminal controls escaped: :func:`shardgen.redact.safe`)."""
    from .redact import safe

    _bar_class().write(safe(msg), file=sys.stderr)
