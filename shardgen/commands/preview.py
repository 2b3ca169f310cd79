"""``shardgen preview``: a contact sheet of a split, one labelled row per class.

The images come from the split's shards themselves (streamed in shard order through
:func:`shardgen.storage.open_build`, so any URL works), the first ``per_class`` of each
class; reading stops as soon as every row is full.

Layout (all in pixels, ``pad`` = 4)::

    width  = label_width + per_class * (thumb + pad) + pad
    height = classes * (thumb + pad) + pad

Row ``r`` holds class ``r`` (the class index); tile ``c`` of it has its top-left corner at
``(label_width + pad + c * (thumb + pad), pad + r * (thumb + pad))``. The label column
shows the class name, its index and how many samples of it the split has, in PIL's
default font. A class with fewer than ``per_class`` samples leaves its last tiles empty.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import ShardgenError, UsageError
from ..format import atomic_write_bytes
from ..storage import is_url, open_build
from .archive import label_of, labels_of, shard_samples, sweep, write_error

__all__ = ["PAD", "PreviewResult", "make_preview", "tile_origin"]

PAD = 4
BACKGROUND = 24
EMPTY_TILE = 56
TEXT = 235
FONT_SIZE = 14


@dataclass
class PreviewResult:
    """Where the sheet went and its geometry."""

    out: str
    split: str
    width: int
    height: int
    thumb: int
    per_class: int
    label_width: int
    classes: list[str] = field(default_factory=list)
    #: images shown per class
    shown: list[int] = field(default_factory=list)


def _font(size: int = FONT_SIZE):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()


def _labels(classes: list[str], counts: dict[str, Any], split: str) -> list[str]:
    return [f"{c}\nlabel {i}\n{int(counts.get(c, 0)):,} in {split}" for i, c in enumerate(classes)]


def tile_origin(label_width: int, thumb: int, row: int, col: int) -> tuple[int, int]:
    """Top-left corner of tile (``row``, ``col``) on the sheet."""
    return label_width + PAD + col * (thumb + PAD), PAD + row * (thumb + PAD)


def _thumbnail(a: np.ndarray, thumb: int) -> Image.Image:
    im = Image.fromarray(a, "L")
    if im.size != (thumb, thumb):
        im = im.resize((thumb, thumb), Image.BOX if thumb < im.width else Image.BILINEAR)
    return im


def _add_tile(tiles: list[list[Image.Image]], rel: str, smp, classes: list[str], ext: str, multi: bool,
              per_class: int, thumb: int) -> int:
    """Add ``smp`` to the rows it belongs to that are not full yet; returns how many tiles were added."""
    if multi:
        rows = labels_of(rel, smp, len(classes)) or (len(classes),)
    else:
        rows = (label_of(rel, smp, len(classes)),)
    rows = tuple(r for r in rows if len(tiles[r]) < per_class)
    if not rows:
        return 0
    try:
        with Image.open(io.BytesIO(smp.parts[ext])) as im:
            a = np.asarray(im.convert("L"))
    except Exception as e:  # any broken member: name it
        raise ShardgenError(f"{rel}: {smp.key}: cannot use sample ({type(e).__name__}: {e}); "
                            f"run shardgen verify") from None
    for r in rows:
        tiles[r].append(_thumbnail(a, thumb))
    return len(rows)


def _collect_tiles(build, split: str, per_class: int, thumb: int) -> list[list[Image.Image]]:
    """The first ``per_class`` images of each class in shard order, as thumbnails; stops reading
    at the end of the shard that fills the last row (every shard drawn from is checked whole
    against the manifest)."""
    classes, ext, counts = build.classes, build.manifest.image.ext, build.split(split).class_counts
    multi = build.manifest.multilabel
    want = [int(counts.get(c, per_class)) for c in classes]
    if multi:  # one row per finding (its positives), then the samples without any
        want.append(int((build.manifest.report.get("no_finding") or {}).get(split, per_class)))
    tiles: list[list[Image.Image]] = [[] for _ in want]
    missing = sum(min(per_class, n) for n in want)
    for entry in build.split(split).shards:
        if missing <= 0:
            break
        for smp in shard_samples(build, entry):  # read to the shard's end: its checksum is checked there
            if missing > 0:
                missing -= _add_tile(tiles, entry.path, smp, classes, ext, multi, per_class, thumb)
    return tiles


def _draw(classes: list[str], texts: list[str], tiles: list[list[Image.Image]], per_class: int,
          thumb: int) -> tuple[Image.Image, int]:
    """The sheet (label column, then one row of tiles per class) and the label column's width."""
    font = _font()
    probe = ImageDraw.Draw(Image.new("L", (1, 1)))
    text_w = max(probe.multiline_textbbox((0, 0), t, font=font)[2] for t in texts)
    label_width = text_w + 2 * PAD
    width = label_width + per_class * (thumb + PAD) + PAD
    height = len(classes) * (thumb + PAD) + PAD
    sheet = Image.new("L", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for r, (row, text) in enumerate(zip(tiles, texts)):
        draw.multiline_text((PAD, PAD + r * (thumb + PAD)), text, fill=TEXT, font=font)
        for c in range(per_class):
            x, y = tile_origin(label_width, thumb, r, c)
            if c < len(row):
                sheet.paste(row[c], (x, y))
            else:
                draw.rectangle((x, y, x + thumb - 1, y + thumb - 1), fill=EMPTY_TILE)
    return sheet, label_width


def make_preview(source: str, split: str = "train", per_class: int = 8, out: str = "preview.png",
                 thumb: int | None = None, overwrite: bool = False,
                 storage_options: dict[str, Any] | None = None) -> PreviewResult:
    """Draw the contact sheet of ``split`` and write it to ``out`` (a local PNG, atomically).

    Args:
        source: build folder, its ``manifest.json``, or a URL of either.
        split: which split's shards to draw from.
        per_class: images per row.
        out: PNG file to write.
        thumb: tile side in pixels (default: the image size, at most 128).
        overwrite: replace ``out`` if it exists (default: refuse, as ``stylegan`` does).

    Raises:
        UsageError: unknown split, bad sizes, ``out`` exists (without ``overwrite``) or its
            folder does not exist.
        ShardgenError: ``out`` cannot be written (a full or read-only disk: exit 1, nothing left
            behind); a shard is missing, broken or does not match the manifest, or a sample is
            broken (named in the message).
    """
    if per_class < 1:
        raise UsageError(f"--per_class must be at least 1, got {per_class}")
    if is_url(out):
        raise UsageError(f"--out must be a local file, got {out}")
    if os.path.lexists(out) and not overwrite:
        raise UsageError(f"--out {out} exists; pass --overwrite to replace it")
    build = open_build(source, storage_options)
    s = build.split(split)
    classes = build.classes
    size = build.manifest.image.size
    thumb = thumb or min(size, 128)
    if not 8 <= thumb <= 1024:
        raise UsageError(f"--thumb must be from 8 to 1024 pixels, got {thumb}")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise UsageError(f"--out: folder {folder} does not exist")

    tiles = _collect_tiles(build, split, per_class, thumb)
    texts = _labels(classes, s.class_counts, split)
    if build.manifest.multilabel:  # rows of positives, then a row of samples without any finding
        texts = [t.replace("\nlabel ", "\nposition ") for t in texts]
        none = int((build.manifest.report.get("no_finding") or {}).get(split, 0))
        texts.append(f"no finding\n\n{none:,} in {split}")
    sheet, label_width = _draw(texts, texts, tiles, per_class, thumb)
    width, height = sheet.size
    buf = io.BytesIO()
    sheet.save(buf, "PNG", optimize=False, compress_level=6)
    sweep(folder)
    try:
        atomic_write_bytes(out, buf.getvalue())
    except OSError as e:
        raise write_error(out, e, "--out") from None
    return PreviewResult(out=out, split=split, width=width, height=height, thumb=thumb, per_class=per_class,
                         label_width=label_width, classes=classes, shown=[len(t) for t in tiles])
