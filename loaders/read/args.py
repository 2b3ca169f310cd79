"""Sizes as users write them: ``10GB``, ``512MiB``, ``1e9`` or an int (bytes)."""

from __future__ import annotations

import re
from typing import Any

from ..errors import UsageError

__all__ = ["parse_size"]


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
