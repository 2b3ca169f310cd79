"""The thin python-fire layer: parse and validate arguments, call the library, print.

Fire turns values into Python literals (``001`` -> 1, ``a,b`` -> a tuple, ``true`` ->
True); every method converts and checks its arguments here, at the boundary, so
library functions get clean types. Errors from the library (:class:`ShardgenError`)
become one line on stderr and the error's exit code (2 for usage errors); no traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from .errors import ShardgenError, UsageError

__all__ = ["CLI", "as_list", "as_bool", "as_int", "as_str"]


def _guard(name: str) -> Callable:
    """Turn ShardgenError into ``shardgen NAME: error: ...`` and SystemExit(code)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ShardgenError as e:
                print(f"shardgen {name}: error: {e}", file=sys.stderr)
                raise SystemExit(e.exit_code) from None

        return wrapper

    return deco


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


def as_str(value: Any, flag: str) -> str:
    """A string flag; fire may have turned it into a number or tuple."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, bool):
        raise UsageError(f"--{flag}: expected a value")
    return str(value)


class CLI:
    """shardgen: labelled images -> deterministic WebDataset shards, and tools for them.

    Commands: build, verify, info, preview, stylegan, upload. Run ``shardgen COMMAND --help``.
    """

    @_guard("build")
    def build(self, src, out, size=256, splits=None, seed=0, shard_size=1000, workers=None,
              classes=None, fit="pad", format="png", strict=False, index=None, group=None,
              max_pixels=None, overwrite=False, progress=True):
        """Build shards from a folder of labelled images.

        Args:
            src: source folder (Kaggle ``<class>/images/*``, ImageFolder ``<class>/*``, or
                already split ``<split>/<class>/*``).
            out: output folder (created; may hold an interrupted build of the same config).
            size: output side in pixels (default 256).
            splits: ratios like ``train=0.8,test=0.2`` (default) summing to 1.
            seed: seed of the split and shuffle (default 0).
            shard_size: samples per shard at most (default 1000).
            workers: processes (default: all cores).
            classes: class order, e.g. ``COVID,Normal`` (default: sorted names).
            fit: ``pad`` (default), ``crop`` or ``stretch`` for non-square images.
            format: image format inside shards (``png``).
            strict: exit non-zero if any file was skipped (the report is still written).
            index: CSV with columns ``path,label[,group][,split]`` instead of scanning.
            group: regex; files whose paths give the same match (or first group) share a split.
            max_pixels: skip larger images as decompression bombs (default 89,478,485).
            overwrite: replace an existing build made with a different config.
            progress: show a progress bar on stderr (default true).
        """
        from .build import BuildConfig, build as run_build
        from .report import format_summary

        cfg = BuildConfig(
            src=as_str(src, "src"),
            out=as_str(out, "out"),
            size=as_int(size, "size", 1),
            splits=None if splits is None else as_str(splits, "splits"),
            seed=as_int(seed, "seed", 0),
            shard_size=as_int(shard_size, "shard_size", 1),
            workers=None if workers is None else as_int(workers, "workers", 1),
            classes=as_list(classes, "classes"),
            fit=as_str(fit, "fit"),
            format=as_str(format, "format"),
            index=None if index is None else as_str(index, "index"),
            group=None if group is None else as_str(group, "group"),
            max_pixels=None if max_pixels is None else as_int(max_pixels, "max_pixels", 1),
        )
        result = run_build(cfg, overwrite=as_bool(overwrite, "overwrite"),
                           progress=as_bool(progress, "progress"))
        print(format_summary(result))
        if as_bool(strict, "strict") and result.skipped:
            raise ShardgenError_strict(len(result.skipped), cfg.out)


def ShardgenError_strict(n: int, out: str) -> ShardgenError:
    from .errors import BuildFailed

    return BuildFailed(f"--strict: {n} file(s) skipped; see {out}/skipped.jsonl")
