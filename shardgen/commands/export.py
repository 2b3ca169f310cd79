"""``shardgen export --layout imagefolder``: a build as class folders, for torchvision, timm and fastai.

``DEST/<split>/<class>/<key>.png``: one folder per split, one folder per class inside it,
the shard PNG bytes copied unchanged under the sample's key (unique across the build).
What torchvision's ``ImageFolder(DEST/<split>)`` does with it, and so what this export
guarantees:

- ``find_classes``: the class folders, sorted with plain ``sorted()``; a class's index is its
  position there. When the build's class order is not sorted order, the indices differ from
  the shards' ``.cls`` and a note says so (``dataset.class_to_idx`` maps names to its indices).
- ``make_dataset``: the files under each class folder whose extension is in
  ``IMG_EXTENSIONS`` (``.png`` is); a class folder with no such file is an error
  (``FileNotFoundError: Found no valid file for the classes ...``). A class with no images in
  a split therefore gets no folder in that split, with a note: ImageFolder on that split
  then numbers the classes after it differently from the other splits.
- Class names must be usable as one folder name (no ``/``, not ``.`` or ``..``, at most 255
  bytes); the export refuses others before writing anything.

DEST is filled under a temporary name beside it and renamed into place at the end; an
existing non-empty DEST is replaced only with ``overwrite``. The shards are read with
:mod:`shardgen.format`, from a folder or any URL, as ``shardgen stylegan`` reads them:
each checked against the manifest while it streams (:func:`shardgen.commands.archive.shard_samples`),
every output path proven inside the temporary folder (:class:`shardgen.commands.archive.FolderOut`);
a shard that does not match, or a DEST that cannot be written, leaves nothing behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ShardgenError, UsageError
from ..progress import bar as progress_bar
from ..storage import Build, is_url, open_build
from .archive import ReplacingFolderOut, has_entries, label_of, samples_of

__all__ = ["LAYOUTS", "FolderExportResult", "export_folders"]

#: Layouts ``shardgen export`` writes.
LAYOUTS = ("imagefolder",)


@dataclass
class FolderExportResult:
    """What :func:`export_folders` wrote.

    Attributes:
        dest: the folder written.
        layout: ``imagefolder``.
        images: files written.
        counts: images per split and class (``{split: {class: n}}``, classes in build order).
        bytes: bytes written.
        notes: one line each: empty classes or splits left out, ImageFolder's class order.
    """

    dest: str
    layout: str
    images: int
    counts: dict[str, dict[str, int]]
    bytes: int
    notes: list[str] = field(default_factory=list)


def _check_class_names(classes: list[str]) -> None:
    for c in classes:
        if not c or c in (".", "..") or "/" in c or "\0" in c or len(c.encode("utf-8", "surrogateescape")) > 255:
            raise UsageError(f"class {c!r} cannot be a folder name; the imagefolder layout needs one folder "
                             "per class (rebuild with other class names)")


def _check_dest(dest: str, build: Build, overwrite: bool) -> str:
    if is_url(dest):
        raise UsageError(f"--dest must be a local folder, got {dest}")
    folder = dest.rstrip("/\\") or dest
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"--dest {dest}: exists and is not a folder")
    parent = os.path.dirname(os.path.abspath(folder))
    if not os.path.isdir(parent):
        raise UsageError(f"--dest {dest}: folder {parent} does not exist")
    if not is_url(build.root):
        d, b = os.path.realpath(folder), os.path.realpath(build.path)
        if d == b or d.startswith(b + os.sep) or b.startswith(d + os.sep):
            raise UsageError(f"--dest {dest}: must not be the build folder, inside it or above it")
    if not overwrite and has_entries(folder):
        raise UsageError(f"--dest {dest}: folder is not empty; pass --overwrite true to replace it")
    return folder


def _notes(classes: list[str], counts: dict[str, dict[str, int]]) -> list[str]:
    notes = []
    for sp, per in counts.items():
        if not sum(per.values()):
            notes.append(f"split {sp} has no samples; no folder written for it")
            continue
        empty = [c for c in classes if not per[c]]
        if empty:
            notes.append(f"split {sp}: no images of {', '.join(empty)}; no folder for "
                         f"{'it' if len(empty) == 1 else 'them'} (ImageFolder refuses empty class folders), "
                         f"so ImageFolder on {sp}/ numbers its {len(classes) - len(empty)} classes differently "
                         "from a split that has them all")
    if sorted(classes) != classes:
        moved = [f"{c} {i}->{sorted(classes).index(c)}" for i, c in enumerate(classes) if sorted(classes)[i] != c]
        notes.append("ImageFolder numbers classes in sorted name order, not this build's order: "
                     f"{', '.join(moved[:4])}{' ...' if len(moved) > 4 else ''} (use its class_to_idx)")
    return notes


def export_folders(source: str, dest: str, *, layout: str = "imagefolder", split: str = "all",
                   overwrite: bool = False, storage_options: dict[str, Any] | None = None,
                   progress: bool = False) -> FolderExportResult:
    """Write ``DEST/<split>/<class>/<key>.png`` for ``split`` (or ``"all"``: every split).

    Args:
        source: build folder, its ``manifest.json``, or a URL of either.
        dest: local folder; absent or empty unless ``overwrite`` (filled under a temporary name
            beside it, then renamed into place).
        layout: ``imagefolder`` (the only one).
        split: a split name, or ``all`` (default).
        overwrite: replace a non-empty ``dest``.
        storage_options: fsspec options for a URL ``source``.
        progress: show a progress bar on stderr.

    Raises:
        UsageError: bad layout, dest, split or class names (before anything is written).
        ShardgenError: a shard or sample is broken or a shard does not match the manifest
            (named in the message); ``dest`` cannot be written or listed (full, read-only,
            another user's). Nothing is committed then.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of: {', '.join(LAYOUTS)}; got {layout!r}")
    build = open_build(source, storage_options)
    splits = build.splits if split == "all" else [split]
    for sp in splits:
        build.split(sp)  # unknown names fail here, before anything is written
    classes = build.classes
    if build.manifest.multilabel:
        raise UsageError(f"{build.root} is a multi-label build: an image has several classes, so there are no "
                         "class folders to export; read the shards, or use shardgen stylegan (vector labels)")
    _check_class_names(classes)
    folder = _check_dest(dest, build, overwrite)
    ext = build.manifest.image.ext
    counts = {sp: {c: 0 for c in classes} for sp in splits}
    total = sum(build.split(sp).samples for sp in splits)
    seen: set[str] = set()
    with ReplacingFolderOut(folder) as out, progress_bar(total, "export", "img", progress) as bar:
        for sp in splits:
            for rel, smp in samples_of(build, [sp]):
                label = label_of(rel, smp, len(classes))
                if ext not in smp.parts:
                    raise ShardgenError(f"{rel}: {smp.key}: sample lacks .{ext}; run shardgen verify")
                name = f"{sp}/{classes[label]}/{smp.key}.{ext}"
                if name in seen:
                    raise ShardgenError(f"{rel}: {smp.key}: key appears twice; run shardgen verify")
                seen.add(name)
                out.write(name, smp.parts[ext])
                counts[sp][classes[label]] += 1
                bar.update(1)
        if not seen:
            raise UsageError(f"{', '.join(splits)}: no samples; nothing to export")
        nbytes = out.commit()
    return FolderExportResult(dest=folder, layout=layout, images=len(seen), counts=counts, bytes=nbytes,
                              notes=_notes(classes, counts))
