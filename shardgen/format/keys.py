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
from typing import Any, Callable, Sequence

import numpy as np
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


def make_keys(keypaths: Sequence[str], paths: Sequence[str] | None = None,
              column: Callable[[], Any] = list) -> Any:
    """Keys for the samples whose key paths are ``keypaths`` (see the module docstring).

    Memory stays at the keys themselves plus 8 bytes per sample: collisions are found
    through a 64-bit hash of each lower-cased key, then confirmed on the strings.

    Args:
        keypaths: per sample, the path the key is made from (``images`` component removed).
        paths: per sample, the full relative source path hashed for suffixes (default:
            ``keypaths``). Must be unique.
        column: makes the empty, append-only sequence the keys are stored in (default
            ``list``; the build passes a compact string column).

    Returns:
        One key per sample, unique ignoring case, at most :data:`MAX_KEY` characters.
    """
    paths = keypaths if paths is None else paths
    base = column()
    for kp, p in zip(keypaths, paths):
        k = sanitise(kp)
        base.append(k if len(k) <= MAX_KEY else _with_hash(k, p))
    over: dict[int, str] = {}  # keys changed by the collision rules
    hashes = np.fromiter((_lower_hash(k) for k in base), np.uint64, len(base))
    clash = _clashing(base, over, hashes)
    for n in (_HASH, 12, 16):
        if not clash:
            return _applied(base, over, column)
        for i in clash:
            k = over.get(i, base[i])
            over[i] = _with_hash(k if n == _HASH else k.rsplit("-", 1)[0], paths[i], n)
            hashes[i] = _lower_hash(over[i])
        clash = _clashing(base, over, hashes)
    for i, k in _number_rest({i: over.get(i, base[i]) for i in clash}, paths).items():
        over[i] = k
    return _applied(base, over, column)


def _lower_hash(key: str) -> int:
    return xxhash.xxh64_intdigest(key.lower().encode("utf-8", "surrogateescape"))


def _clashing(base: Sequence[str], over: dict[int, str], hashes: np.ndarray) -> list[int]:
    """Indices of the keys equal, ignoring case, to another key (ascending): only keys whose
    hash (``hashes``, of the lower-cased keys) equals another's are compared as strings."""
    _, inverse, counts = np.unique(hashes, return_inverse=True, return_counts=True)
    cands = np.flatnonzero(counts[inverse] > 1)
    if not len(cands):
        return []
    lower = {int(i): over.get(int(i), base[int(i)]).lower() for i in cands}
    count = Counter(lower.values())
    return [i for i, k in lower.items() if count[k] > 1]


def _applied(base, over: dict[int, str], column):
    """``base`` with the keys in ``over`` replaced (a new column when there are any)."""
    if not over:
        return base
    if isinstance(base, list):
        for i, k in over.items():
            base[i] = k
        return base
    out = column()
    for i, k in enumerate(base):
        out.append(over.get(i, k))
    return out


def _number_rest(keys: dict[int, str], paths: Sequence[str]) -> dict[int, str]:
    """Last resort: number the remaining equal keys in path order (``{index: key}`` in and out)."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in keys.items():
        groups[k.lower()].append(i)
    out = dict(keys)
    for members in groups.values():
        for n, i in enumerate(sorted(members, key=lambda i: path_bytes(paths[i]))[1:], start=2):
            out[i] = f"{keys[i][:MAX_KEY - 1 - len(str(n))]}-{n}"
    return out
