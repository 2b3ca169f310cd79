"""The build's configuration: a frozen, validated :class:`BuildConfig` and the config fingerprint.

Every value is checked when the config is made, with a one-line reason
(:class:`~shardgen.errors.UsageError`), before any work is done.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..cpus import usable_cpus
from ..errors import UsageError
from ..format import SPLIT_RE
from ..imaging.dicom import DICOM_WINDOWS
from ..imaging.image import DEFAULT_MAX_PIXELS, FITS, ImageOptions, encoder_info

__all__ = ["BuildConfig", "parse_splits", "parse_columns", "parse_split_lists", "fingerprint_of", "FORMATS",
           "DEFAULT_SPLITS", "ROLES"]

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


#: The roles a CSV index column can play (``--columns``), each defaulting to its own name.
ROLES = ("path", "label", "group", "split")


def _pairs(spec: str, flag: str, example: str) -> list[tuple[str, str]]:
    out = []
    for part in str(spec).split(","):
        name, sep, val = part.partition("=")
        if not sep or not name.strip() or not val.strip():
            raise UsageError(f"{flag}: expected name=value pairs like {example}; got {spec!r}")
        out.append((name.strip(), val.strip()))
    return out


def parse_columns(spec: str) -> tuple[tuple[str, str], ...]:
    """``path=Image Index,label=Finding Labels`` -> ``(("path", "Image Index"), ("label", "Finding Labels"))``.

    Roles not named keep their default column (the role's own name).

    Raises:
        UsageError: malformed, an unknown role, or a role or column named twice.
    """
    pairs = _pairs(spec, "--columns", "path=Image Index,label=Finding Labels")
    for role, _ in pairs:
        if role not in ROLES:
            raise UsageError(f"--columns: unknown role {role!r} (roles: {', '.join(ROLES)})")
    roles = [r for r, _ in pairs]
    cols = [c for _, c in pairs]
    if len(set(roles)) != len(roles) or len(set(cols)) != len(cols):
        raise UsageError(f"--columns: a role or a column is named twice: {spec!r}")
    return tuple(pairs)


def parse_split_lists(spec: str) -> tuple[tuple[str, str], ...]:
    """``train=train_val_list.txt,test=test_list.txt`` -> ``(("train", "..."), ("test", "..."))``.

    Raises:
        UsageError: malformed, a bad or repeated split name, or a file named twice.
    """
    pairs = _pairs(spec, "--split_lists", "train=train_val_list.txt,test=test_list.txt")
    for name, _ in pairs:
        if not SPLIT_RE.match(name):
            raise UsageError(f"--split_lists: split name {name!r} may only use letters, digits, _ and -")
    if len({n for n, _ in pairs}) != len(pairs):
        raise UsageError(f"--split_lists: a split is named twice: {spec!r}")
    if len({os.path.realpath(f) for _, f in pairs}) != len(pairs):
        raise UsageError(f"--split_lists: a file is given for two splits: {spec!r}")
    return tuple(pairs)


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
        jpeg_draft: decode JPEGs at least twice the needed size at libjpeg's DCT scale first
            (default True; changes pixels slightly, so it is part of the fingerprint); False:
            the exact full decode.
        columns: ``role=COL,...``: the index's columns for the roles path, label, group, split
            (default: columns named as the roles).
        label_sep: separator of the labels in one label cell; makes the build multi-label.
        no_finding: the label value that means no positive class (an all-zero target);
            needs ``label_sep``.
        split_lists: ``split=FILE,...``: official split files (one file name or relative
            path per line); needs ``index``, excludes ``splits``.
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
    jpeg_draft: bool = True
    columns: str | None = None
    label_sep: str | None = None
    no_finding: str | None = None
    split_lists: str | None = None
    split_ratios: tuple[tuple[str, float], ...] | None = field(default=None, init=False)
    column_map: tuple[tuple[str, str], ...] = field(default=(), init=False)
    split_list_files: tuple[tuple[str, str], ...] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.jpeg_draft, bool):
            raise UsageError(f"--jpeg_draft must be true or false, got {self.jpeg_draft!r}")
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
        self._check_index_options()
        src_real, out_real = os.path.realpath(self.src), os.path.realpath(self.out)
        if _inside(out_real, src_real):
            raise UsageError(f"OUT {self.out} must not be inside SRC {self.src}"
                             + (f" (it resolves to {out_real})" if out_real != os.path.abspath(self.out) else ""))
        if _inside(src_real, out_real):
            raise UsageError(f"SRC {self.src} must not be inside OUT {self.out}")

    def _check_index_options(self) -> None:
        """``--columns``, ``--label_sep``, ``--no_finding``, ``--split_lists`` (they need ``--index``)."""
        for flag, value in (("columns", self.columns), ("label_sep", self.label_sep),
                            ("split_lists", self.split_lists)):
            if value is not None and self.index is None:
                raise UsageError(f"--{flag} applies to a CSV index: give --index too")
        if self.label_sep is not None and (not isinstance(self.label_sep, str) or not self.label_sep):
            raise UsageError(f"--label_sep must be a non-empty string, got {self.label_sep!r}")
        if self.no_finding is not None:
            if self.label_sep is None:
                raise UsageError("--no_finding applies to a multi-label build: give --label_sep too")
            if not str(self.no_finding).strip():
                raise UsageError("--no_finding must be a non-empty label")
        if self.columns is not None:
            object.__setattr__(self, "column_map", parse_columns(self.columns))
        if self.split_lists is not None:
            if self.splits is not None:
                raise UsageError("--split_lists and --splits exclude each other: the lists decide the splits")
            object.__setattr__(self, "split_list_files", parse_split_lists(self.split_lists))

    @property
    def multilabel(self) -> bool:
        """The build is multi-label (``--label_sep`` given)."""
        return self.label_sep is not None

    @property
    def n_workers(self) -> int:
        if self.workers:
            return self.workers
        return usable_cpus()

    @property
    def pixel_limit(self) -> int:
        return self.max_pixels or DEFAULT_MAX_PIXELS

    @property
    def image_options(self) -> ImageOptions:
        """The conversion options of each image, as the workers take them."""
        return ImageOptions(self.size, self.fit, self.pixel_limit, self.dicom_window, self.jpeg_draft)


def _inside(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or lies below it (both real, absolute paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def fingerprint_of(cfg: BuildConfig, layout: str, classes: list[str],
                   ratios: tuple[tuple[str, float], ...] | None) -> dict[str, Any]:
    """The options that decide the output, as recorded in ``manifest.json`` ``config``.

    ``splits`` holds the ratios used (the default ones too), or ``"as found"`` for a
    source that was already split. ``encoder`` (:func:`~shardgen.imaging.image.encoder_info`) and
    ``codecs`` (:func:`~shardgen.imaging.codecs.codec_versions`) are part of it so that a build is
    never resumed with another PNG encoder or other decoding libraries. ``dicom_window``
    is there only when it is not ``auto``, and the CSV options (``columns``, ``label_sep``,
    ``no_finding``, ``split_lists``) only when given, so builds that do not use them record
    exactly what they always did.
    """
    from ..imaging.codecs import codec_versions

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
        "jpeg_draft": cfg.jpeg_draft,
        "layout": layout,
        "encoder": encoder_info(),
        "codecs": codec_versions().to_json(),
    }
    if cfg.dicom_window != "auto":
        fp["dicom_window"] = cfg.dicom_window
    if cfg.columns is not None:
        fp["columns"] = dict(cfg.column_map)
    if cfg.label_sep is not None:
        fp["label_sep"] = cfg.label_sep
        fp["no_finding"] = cfg.no_finding
    if cfg.split_list_files is not None:
        fp["split_lists"] = {name: os.path.basename(f) for name, f in cfg.split_list_files}
    return fp
