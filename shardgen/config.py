"""The build's configuration: a frozen, validated :class:`BuildConfig` and the config fingerprint.

Every value is checked when the config is made, with a one-line reason
(:class:`~shardgen.errors.UsageError`), before any work is done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .cpus import usable_cpus
from .dicom import DICOM_WINDOWS
from .errors import UsageError
from .format import SPLIT_RE
from .image import DEFAULT_MAX_PIXELS, FITS, encoder_info

__all__ = ["BuildConfig", "parse_splits", "fingerprint_of", "FORMATS", "DEFAULT_SPLITS"]

FORMATS = ("png",)
DEFAULT_SPLITS = "train=0.8,test=0.2"


def parse_splits(spec: str) -> tuple[tuple[str, float], ...]:
    """Parse ``train=0.8,test=0.2`` into ``(("train", 0.8), ("test", 0.2))``.

    Raises:
        UsageError: malformed, duplicate or bad names, ratios outside (0, 1], or a sum other than 1.
    """
    out: list[tuple[str, float]] = []
    for part in str(spec).split(","):
        name, sep, val = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--splits: expected name=ratio pairs like train=0.8,test=0.2; got {spec!r}")
        if not SPLIT_RE.match(name):
            raise UsageError(f"--splits: split name {name!r} may only use letters, digits, _ and -")
        try:
            r = float(val)
        except ValueError:
            raise UsageError(f"--splits: ratio of {name!r} is not a number: {val!r}") from None
        if not 0 < r <= 1:
            raise UsageError(f"--splits: ratio of {name!r} must be in (0, 1], got {r}")
        if name in dict(out):
            raise UsageError(f"--splits: split {name!r} given twice")
        out.append((name, r))
    total = sum(r for _, r in out)
    if abs(total - 1.0) > 1e-6:
        raise UsageError(f"--splits: ratios must sum to 1, got {total:g} ({spec})")
    return tuple(out)


@dataclass(frozen=True)
class BuildConfig:
    """Everything that decides a build's output (plus ``workers``, which never changes it).

    Attributes:
        src: source folder.
        out: output folder.
        size: output image side in pixels (default 256).
        splits: ``name=ratio,...`` (default ``train=0.8,test=0.2``; must be None for pre-split sources).
        seed: seed of split assignment and shuffling (default 0).
        shard_size: samples per shard at most (default 1000).
        workers: worker processes (default: all usable cores).
        classes: class order (default: sorted names); a subset builds only those classes.
        fit: ``pad`` | ``crop`` | ``stretch`` for non-square inputs (default ``pad``).
        format: image format in the shards (``png``).
        index: optional CSV ``path,label[,group][,split]``.
        group: optional regex giving a group id from each relative path.
        max_pixels: inputs with more pixels are skipped as decompression bombs (default 89,478,485).
        dicom_window: ``auto`` (default: a DICOM image's first VOI LUT or window, else its full
            range) or ``none`` (always the full range); see ``docs/dicom.md``.
    """

    src: str
    out: str
    size: int = 256
    splits: str | None = None
    seed: int = 0
    shard_size: int = 1000
    workers: int | None = None
    classes: tuple[str, ...] | None = None
    fit: str = "pad"
    format: str = "png"
    index: str | None = None
    group: str | None = None
    max_pixels: int | None = None
    dicom_window: str = "auto"
    split_ratios: tuple[tuple[str, float], ...] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 8 <= self.size <= 16384:
            raise UsageError(f"--size must be an integer from 8 to 16384, got {self.size!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise UsageError(f"--shard_size must be a positive integer, got {self.shard_size!r}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise UsageError(f"--workers must be a positive integer, got {self.workers!r}")
        if self.fit not in FITS:
            raise UsageError(f"--fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if self.format not in FORMATS:
            raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.dicom_window not in DICOM_WINDOWS:
            raise UsageError(f"--dicom_window must be one of {', '.join(DICOM_WINDOWS)}, got {self.dicom_window!r}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise UsageError(f"--max_pixels must be positive, got {self.max_pixels!r}")
        if self.classes is not None:
            cls = tuple(self.classes)
            if len(set(cls)) != len(cls):
                raise UsageError(f"--classes names a class twice: {', '.join(cls)}")
            object.__setattr__(self, "classes", cls)
        if self.splits is not None:
            object.__setattr__(self, "split_ratios", parse_splits(self.splits))
        src_real, out_real = os.path.realpath(self.src), os.path.realpath(self.out)
        if _inside(out_real, src_real):
            raise UsageError(f"OUT {self.out} must not be inside SRC {self.src}"
                             + (f" (it resolves to {out_real})" if out_real != os.path.abspath(self.out) else ""))
        if _inside(src_real, out_real):
            raise UsageError(f"SRC {self.src} must not be inside OUT {self.out}")

    @property
    def n_workers(self) -> int:
        if self.workers:
            return self.workers
        return usable_cpus()

    @property
    def pixel_limit(self) -> int:
        return self.max_pixels or DEFAULT_MAX_PIXELS


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (both real, absolute paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def fingerprint_of(cfg: BuildConfig, layout: str, classes: list[str],
                   ratios: tuple[tuple[str, float], ...] | None) -> dict[str, Any]:
    """The options that decide the output, as recorded in ``manifest.json`` ``config``.

    ``splits`` holds the ratios used (the default ones too), or ``"as found"`` for a
    source that was already split. ``encoder`` (:func:`~shardgen.image.encoder_info`) is
    part of it so that a build is never resumed with another PNG encoder. ``dicom_window``
    is there only when it is not ``auto``, so builds that do not use it keep their manifest.
    """
    fp: dict[str, Any] = {
        "size": cfg.size,
        "splits": dict(ratios) if ratios else "as found",
        "seed": cfg.seed,
        "shard_size": cfg.shard_size,
        "classes": list(classes),
        "fit": cfg.fit,
        "format": cfg.format,
        "group": cfg.group,
        "index": os.path.basename(cfg.index) if cfg.index else None,
        "max_pixels": cfg.pixel_limit,
        "layout": layout,
        "encoder": encoder_info(),
    }
    if cfg.dicom_window != "auto":
        fp["dicom_window"] = cfg.dicom_window
    return fp
