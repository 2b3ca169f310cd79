"""Arguments as users write them, checked once where the loaders take them: sizes
(``10GB``, ``512MiB``, ``1e9`` or an int of bytes), integers with a floor, booleans and
``on_error``. Each check raises a one-line :class:`~loaders.errors.UsageError` naming
the argument."""

from __future__ import annotations

import re
from typing import Any

from ..errors import UsageError

__all__ = ["parse_size", "as_int", "as_bool", "check_on_error", "ON_ERROR"]

#: What ``on_error`` may be: raise on bad data, or skip the sample (a padding sample in its place).
ON_ERROR = ("raise", "skip")


def parse_size(value: Any, what: str = "cache_limit") -> int:
    """``10GB`` / ``512MiB`` / ``1e9`` / an int -> bytes (decimal and binary units).

    Raises:
        UsageError: not a positive size.
    """
    if isinstance(value, bool):
        raise UsageError(f"{what}: expected a size like 10GB, got {value!r}")
    if isinstance(value, (int, float)):
        n = int(value)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([KMGT]?i?B?|)\s*", str(value), re.I)
        if not m:
            raise UsageError(f"{what}: expected a size like 10GB or 512MiB, got {value!r}")
        unit = m.group(2).upper().rstrip("B")
        mult = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
        n = int(float(m.group(1)) * mult)
    if n <= 0:
        raise UsageError(f"{what}: must be positive, got {value!r}")
    return n


def as_int(value: Any, name: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``.

    Raises:
        UsageError: not an integer, or below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise UsageError(f"{name} must be at least {minimum}, got {value}")
    return value


def as_bool(value: Any, name: str) -> bool:
    """``value`` if it is True or False.

    Raises:
        UsageError: anything else (``1``, ``"yes"``...).
    """
    if not isinstance(value, bool):
        raise UsageError(f"{name} must be True or False, got {value!r}")
    return value


def check_on_error(on_error: str) -> str:
    """``on_error`` if it is one of :data:`ON_ERROR`.

    Raises:
        UsageError: anything else.
    """
    if on_error not in ON_ERROR:
        raise UsageError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error
