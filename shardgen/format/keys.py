"""The sample key rule: unique, short, readable keys from source paths.

A key is made from the source path relative to SRC (without the Kaggle ``images``
component and without the extension):

1. **Sanitise**: path components are joined with ``_`` and every run of characters
   outside ``[A-Za-z0-9_-]`` becomes one ``_`` (leading/trailing ``_`` dropped; an empty
   result is ``img``). ``COVID/images/COVID-1.png`` -> ``COVID_COVID-1``.
2. **Bound the length**: a key longer than :data:`MAX_KEY` (64) characters keeps its first
   55 characters and gets ``-`` plus 8 hex digits of the xxh64 of the full path's bytes, so
   every tar member name (``<key>.<ext>``) stays far below the 100 bytes of a plain ustar
   header: no PAX or GNU long-name headers, which NVIDIA DALI's reader mishandles.
3. **Resolve collisions**: keys that are equal ignoring case (``x y.png`` and ``x_y.png``;
   names in non-Latin scripts, which sanitise to nothing; long names with a common start;
   ``A.png`` and ``a.png``, which collide on case-insensitive file systems) all get the
   same ``-`` plus 8 hex digits suffix rule, from their own full path (the prefix is cut to keep
   the bound). In the (astronomically rare) case two hashed keys still collide, the longer
   hash of the path is used (up to 16 hex digits), then ``-2``, ``-3`` in path order.

Keys depend only on the set of source paths, never on listing order or worker count.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Sequence

import xxhash

__all__ = ["MAX_KEY", "make_keys", "sanitise", "path_bytes"]

#: Longest key, in characters (ASCII, so bytes).
MAX_KEY = 64
_HASH = 8
_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def path_bytes(path: str) -> bytes:
    """The bytes of a path as the file system has them (undecodable bytes were surrogate-escaped)."""
    return path.encode("utf-8", "surrogateescape")


def _digest(path: str, n: int = _HASH) -> str:
    return xxhash.xxh64_hexdigest(path_bytes(path))[:n]


def sanitise(keypath: str) -> str:
    """Step 1: ``a/b c.png`` -> ``a_b_c`` (no length bound)."""
    stem = keypath.rsplit(".", 1)[0] if "." in keypath.rsplit("/", 1)[-1] else keypath
    return _BAD.sub("_", "_".join(stem.split("/"))).strip("_") or "img"


def _with_hash(base: str, path: str, n: int = _HASH) -> str:
    return f"{base[:MAX_KEY - n - 1]}-{_digest(path, n)}"


def make_keys(keypaths: Sequence[str], paths: Sequence[str] | None = None) -> list[str]:
    """Keys for the samples whose key paths are ``keypaths`` (see the module docstring).

    Args:
        keypaths: per sample, the path the key is made from (``images`` component removed).
        paths: per sample, the full relative source path hashed for suffixes (default:
            ``keypaths``). Must be unique.

    Returns:
        One key per sample, unique ignoring case, at most :data:`MAX_KEY` characters.
    """
    paths = list(keypaths) if paths is None else list(paths)
    keys = []
    for kp, p in zip(keypaths, paths):
        k = sanitise(kp)
        keys.append(k if len(k) <= MAX_KEY else _with_hash(k, p))
    count = Counter(k.lower() for k in keys)
    keys = [_with_hash(k, p) if count[k.lower()] > 1 else k for k, p in zip(keys, paths)]
    for n in (12, 16):
        count = Counter(k.lower() for k in keys)
        if all(c == 1 for c in count.values()):
            return keys
        keys = [_with_hash(k.rsplit("-", 1)[0], p, n) if count[k.lower()] > 1 else k for k, p in zip(keys, paths)]
    return _number_rest(keys, paths)


def _number_rest(keys: list[str], paths: list[str]) -> list[str]:
    """Last resort: number the remaining equal keys in path order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k.lower()].append(i)
    out = list(keys)
    for members in groups.values():
        for n, i in enumerate(sorted(members, key=lambda i: path_bytes(paths[i]))[1:], start=2):
            out[i] = f"{keys[i][:MAX_KEY - 1 - len(str(n))]}-{n}"
    return out
