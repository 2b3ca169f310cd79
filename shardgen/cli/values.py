"""The CLI's value converters: a flag's string (as typed: :func:`shardgen.cli.argv.check_argv`
quotes it so that fire never re-parses it) -> the typed value, or one :class:`UsageError` line
naming the flag."""

from __future__ import annotations

from typing import Any

from ..errors import UsageError

__all__ = ["as_list", "as_bool", "as_int", "as_float", "as_str"]


def as_list(value: Any, flag: str) -> list[str] | None:
    """``a,b`` / ``('a','b')`` / ``'a'`` -> ``['a', 'b']``; None stays None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = str(value).split(",")
    items = [i.strip() for i in items]
    if not items or any(not i for i in items):
        raise UsageError(f"--{flag}: expected a comma-separated list, got {value!r}")
    return items


def as_bool(value: Any, flag: str) -> bool:
    """Accept True/False and the strings true/false/yes/no/1/0."""
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"--{flag}: expected true or false, got {value!r}")


def as_int(value: Any, flag: str, minimum: int | None = None) -> int:
    """An integer flag (rejects floats like 1.5 and booleans)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UsageError(f"--{flag}: expected an integer, got {value!r}")
    try:
        v = int(value)
    except ValueError:
        raise UsageError(f"--{flag}: expected an integer, got {value!r}") from None
    if minimum is not None and v < minimum:
        raise UsageError(f"--{flag}: must be at least {minimum}, got {v}")
    return v


def as_float(value: Any, flag: str) -> float:
    """A number flag (``30``, ``2.5``); booleans and other words are refused."""
    if isinstance(value, bool):
        raise UsageError(f"--{flag}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"--{flag}: expected a number, got {value!r}") from None


def as_str(value: Any, flag: str) -> str:
    """A string flag; fire may have turned it into a number or tuple."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        raise UsageError(f"--{flag}: expected a value")
    return str(value)
