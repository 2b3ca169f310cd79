"""Settling what a build holds: SRC scanned, its classes and split ratios checked.

The first phase of :func:`shardgen.build.run.build` (it reads SRC only, never OUT).
"""

from __future__ import annotations

import os
import re

import numpy as np

from ..sources.columns import ItemTable
from .config import DEFAULT_SPLITS, BuildConfig, parse_splits
from ..errors import UsageError
from ..sources.index import IndexOptions
from ..sources.archives import archive_source, is_archive, scan_archives, top_archives
from ..sources.folder import compile_group, scan

__all__ = ["resolve"]


def resolve(cfg: BuildConfig, urls=None):
    """Scan SRC and settle classes and splits.

    Args:
        cfg: the build's config.
        urls: the build's :class:`~shardgen.build.remote_out.Paths` (None: SRC and OUT are local).

    Returns:
        (scan result, items, classes, split ratios or None, number of items left out by ``--classes``).

    Raises:
        UsageError: no images, unknown or empty classes, bad class names, ``--splits`` on a split SRC.
    """
    if urls is not None and urls.src_remote:
        from ..storage.transport import storage_errors
        from ..sources.url import scan_url

        with storage_errors(cfg.src, "listing SRC", urls.src.options):
            if is_archive(cfg.src):
                sr = scan_archives(urls.src.url, cfg.index, compile_group(cfg.group),
                                   IndexOptions.of(cfg) if cfg.index else None, loc=urls.src)
            else:
                sr = scan_url(urls.src, cfg.index, cfg.group, IndexOptions.of(cfg) if cfg.index else None)
    elif archive_source(cfg.src):
        sr = scan_archives(cfg.src, cfg.index, compile_group(cfg.group), IndexOptions.of(cfg) if cfg.index else None)
    else:
        sr = scan(cfg.src, cfg.index, cfg.group, IndexOptions.of(cfg) if cfg.index else None)
        beside = top_archives(cfg.src)[0]
        if beside:
            sr.notes.append(f"SRC also holds {', '.join(beside[:3])}{' ...' if len(beside) > 3 else ''}: not opened, "
                            "since SRC holds folders (build an archive alone to read it)")
    if not sr.items:
        raise UsageError(f"SRC {cfg.src}: no images found ({sr.layout} layout)")
    _check_class_names(sr)
    if not isinstance(sr.items, ItemTable):
        sr.items = ItemTable.of(sr.items)
    if sr.multilabel:
        classes, items, excluded = _multilabel_classes(cfg, sr), sr.items, 0
        return sr, items, classes, _ratios(cfg, sr), excluded
    if cfg.classes is not None:
        unknown = [c for c in cfg.classes if c not in sr.labels]
        if unknown:
            raise UsageError(f"--classes: unknown class {unknown[0]!r} (found: {', '.join(sr.labels)})")
        classes = list(cfg.classes)
    else:
        _check_empty_classes(sr)
        classes = list(sr.labels)
    if sr.layout != "index":
        sr.doubts += _identifier_classes(cfg.src, classes)
    if len(classes) == 1:
        why = "--classes names one class" if cfg.classes is not None else sr.single_reason
        sr.notes.append(f"the build has a single class, {classes[0]!r} ({why}): fine for unconditional "
                        "training; for a classifier, SRC must hold one folder per class")
    wanted = set(classes)
    keep = [code for code, c in enumerate(sr.items.label_names) if c in wanted]
    take = np.isin(sr.items.label_codes(), keep)
    items = sr.items if take.all() else sr.items.take(np.flatnonzero(take))
    excluded = len(sr.items) - len(items)
    if not items:
        raise UsageError(f"SRC {cfg.src}: no images in the selected classes")
    return sr, items, classes, _ratios(cfg, sr), excluded


#: More classes than this are taken for identifiers (patients, studies), not labels.
MAX_PLAUSIBLE_CLASSES = 1000
#: A folder name that is an identifier: letters and a number (``patient00001``, ``images_001``,
#: ``study1``, ``p10``) or a number alone.
_ID_NAME = re.compile(r"^[A-Za-z]*[_-]?\d+$")
#: Words of a folder name that hold files rather than name a label (``stage_2_train_images``).
_CONTAINER_WORDS = frozenset({"images", "image", "imgs", "img", "files", "data", "dicom", "dicoms", "png", "jpg",
                              "train", "test", "val", "valid", "validation", "part"})


#: Letters before a number that name a label, not an identifier (``class3``, ``grade_2``).
_LABEL_WORDS = frozenset({"class", "label", "grade", "category", "cat", "type", "level", "kl", "stage"})


def _looks_like_identifier(name: str) -> bool:
    words = {w for w in re.split(r"[_\-. ]+", name.lower()) if w}
    if words & _CONTAINER_WORDS:
        return True
    m = _ID_NAME.match(name)
    return bool(m) and re.sub(r"[_\-]?\d+$", "", name).lower() not in _LABEL_WORDS


def _identifier_classes(src: str, classes: list[str]) -> list[str]:
    """A doubt when the class folders look like identifiers or containers, not labels (every
    name, or more than :data:`MAX_PLAUSIBLE_CLASSES` of them), naming the CSVs at SRC's top."""
    if len(classes) < 2:
        return []
    odd = [c for c in classes if _looks_like_identifier(c)]
    if len(classes) <= MAX_PLAUSIBLE_CLASSES and len(odd) < len(classes):
        return []
    shown = ", ".join((odd or classes)[:3]) + (", ..." if len(classes) > 3 else "")
    msg = (f"the {len(classes):,} classes look like identifiers, not labels ({shown}): SRC's folders are "
           "probably patients, studies or parts of the download")
    csvs = _top_csvs(src)
    if csvs:
        msg += f"; SRC holds {', '.join(csvs[:3])}{', ...' if len(csvs) > 3 else ''}: did you mean --index?"
    return [msg]


def _top_csvs(src: str) -> list[str]:
    """The CSV files (also gzipped or zipped) at the top of a local SRC, sorted."""
    try:
        names = os.listdir(src)
    except OSError:
        return []
    return sorted(n for n in names if n.lower().endswith((".csv", ".csv.gz", ".csv.zip"))
                  and os.path.isfile(os.path.join(src, n)))


def _ratios(cfg: BuildConfig, sr):
    """The split ratios (None: the source or the split lists give the splits)."""
    if sr.splits is not None:
        if cfg.split_ratios is not None:
            raise UsageError(f"SRC {cfg.src} is already split ({', '.join(sr.splits)}); --splits does not apply")
        return None
    return cfg.split_ratios or parse_splits(DEFAULT_SPLITS)


def _multilabel_classes(cfg: BuildConfig, sr) -> list[str]:
    """The classes of a multi-label build: every finding (``--classes`` may reorder them)."""
    if not sr.labels:
        raise UsageError(f"--index {cfg.index}: no finding in any row (every image is {cfg.no_finding!r})")
    if cfg.classes is None:
        return list(sr.labels)
    if sorted(cfg.classes) != sorted(sr.labels):
        missing = sorted(set(sr.labels) - set(cfg.classes)) or sorted(set(cfg.classes) - set(sr.labels))
        raise UsageError(f"--classes: a multi-label build needs every finding, in any order; "
                         f"{missing[0]!r} differs (found: {', '.join(sr.labels)})")
    return list(cfg.classes)


def _check_class_names(sr) -> None:
    """Class names go into JSON everywhere: they must be text (valid UTF-8)."""
    for label in sr.labels:
        try:
            label.encode("utf-8")
        except UnicodeEncodeError:
            shown = label.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
            raise UsageError(f"class name {shown!r} is not valid UTF-8: rename the folder") from None


def _check_empty_classes(sr) -> None:
    """A class folder without images would shift every label index after it: refuse it."""
    present = set(sr.items.label_names)
    empty = [c for c in sr.labels if c not in present]
    if empty:
        where = ", ".join(os.path.join(sr.root, d) for d in sr.class_dirs.get(empty[0], [empty[0]]))
        more = f" (and {len(empty) - 1} more empty class(es))" if len(empty) > 1 else ""
        raise UsageError(f"class folder {where} holds no images{more}; remove it, or name the classes "
                         "with --classes to keep an empty class")
