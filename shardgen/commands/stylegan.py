"""``shardgen stylegan``: export a build in the layout StyleGAN2-ADA's ``dataset_tool.py`` writes.

What StyleGAN2-ADA (``training/dataset.py``, ``ImageFolderDataset``) does with a ``--data``
zip or folder, and what this export therefore guarantees:

- It lists every file whose extension PIL knows as an image and sorts the names; the
  images here are ``00000/img00000000.png``, ``00000/img00000001.png``, ... (1000 per
  folder, ``f"{i:08d}"[:5]`` names the folder, exactly as ``dataset_tool.py``), so sorted
  order is export order, and nothing else in the archive has an image extension.
- It reads ``dataset.json`` ``{"labels": [[name, label], ...]}``, turns it into a dict and
  looks every image name up in it (a missing name is a KeyError at start-up); labels here
  are the build's class indices (integers, so it one-hot encodes them with
  ``max(label) + 1`` classes), one for every image. For a multi-label build each label
  is the multi-hot list of C floats (``0.0``/``1.0``), which it reads as ``float32``
  vectors with ``label_dim = C``.
- It takes the shape of the first image and asserts every image has it; the networks need
  a square power-of-two resolution of at least 4. The export refuses other sizes before
  writing anything.
- Images are decoded with PIL (or pyspng); a 2-D (grayscale) array becomes HxWx1, so
  1-channel 8-bit grayscale PNGs give ``num_channels == 1``.

The zip is ``ZIP_STORED`` like ``dataset_tool.py``'s, with fixed member timestamps, so
the same build gives a byte-identical archive; it is written under a temporary name and
renamed (never committed when a shard does not match the manifest: every shard is
checked while it streams, see :func:`shardgen.commands.archive.shard_samples`). The shard PNG bytes
are copied unchanged (lossless; already small) unless ``uncompressed`` asks for PNGs
re-encoded at ``compress_level=0`` as ``dataset_tool.py`` stores them.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import ShardgenError, UsageError
from ..progress import bar as progress_bar
from ..storage import is_url, open_build
from .archive import FolderOut, ZipOut, has_entries, label_of, labels_of, samples_of

__all__ = ["IMAGES_PER_FOLDER", "archive_name", "check_resolution", "ExportResult", "export_stylegan"]

IMAGES_PER_FOLDER = 1000


def archive_name(index: int) -> str:
    """Name of image ``index`` in the archive, as ``dataset_tool.py`` names it."""
    s = f"{index:08d}"
    return f"{s[:5]}/img{s}.png"


def check_resolution(size: int) -> None:
    """Raise UsageError unless ``size`` is a power of two and at least 4 (StyleGAN2-ADA's rule)."""
    if size < 4 or size & (size - 1):
        lo = 1 << max(2, size.bit_length() - 1)
        hi = lo * 2
        raise UsageError(f"StyleGAN2-ADA needs square images with a power-of-two side of at least 4; "
                         f"this build is {size}x{size}. Rebuild with --size {lo if lo >= 4 else 4} or "
                         f"--size {hi}")


@dataclass
class ExportResult:
    dest: str
    kind: str  # "zip" or "folder"
    images: int
    splits: list[str]
    size: int
    class_counts: dict[str, int]
    label_dim: int
    classes: int
    bytes: int


def _open_dest(dest: str, overwrite: bool):
    if is_url(dest):
        raise UsageError(f"--dest must be a local path, got {dest}")
    if dest.endswith(("/", os.sep)):
        folder = dest.rstrip("/\\") or dest
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise UsageError(f"--dest {dest}: exists and is not a folder")
        if has_entries(folder):
            raise UsageError(f"--dest {dest}: folder is not empty (StyleGAN2-ADA's dataset_tool.py "
                             "requires an empty one too)")
        parent = os.path.dirname(os.path.abspath(folder))
        if not os.path.isdir(parent):
            raise UsageError(f"--dest {dest}: folder {parent} does not exist")
        return "folder", FolderOut
    if not dest.lower().endswith(".zip"):
        raise UsageError(f"--dest must end in .zip (an archive) or / (a folder), got {dest!r}")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise UsageError(f"--dest {dest}: folder {parent} does not exist")
    if os.path.exists(dest) and not overwrite:
        raise UsageError(f"--dest {dest} exists; pass --overwrite true to replace it")
    if os.path.isdir(dest):
        raise UsageError(f"--dest {dest} is a folder; end it with / to write a folder")
    return "zip", ZipOut


def _image(rel: str, key: str, data: bytes, size: int, uncompressed: bool) -> bytes:
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode, dims = im.format, im.mode, im.size
            if fmt != "PNG" or mode != "L" or dims != (size, size):
                raise ShardgenError(f"{rel}: {key}: image is {fmt} {dims[0]}x{dims[1]} {mode}, expected "
                                    f"PNG {size}x{size} L; run shardgen verify")
            if not uncompressed:
                return data
            im.load()
            buf = io.BytesIO()
            im.save(buf, format="png", compress_level=0, optimize=False)
            return buf.getvalue()
    except ShardgenError:
        raise
    except Exception as e:
        raise ShardgenError(f"{rel}: {key}: image does not decode ({e}); run shardgen verify") from None


def export_stylegan(source: str, split: str = "train", dest: str = "train.zip", *, uncompressed: bool = False,
                    overwrite: bool = False, storage_options: dict[str, Any] | None = None,
                    progress: bool = False) -> ExportResult:
    """Write ``split`` (or ``"all"``: every split, in manifest order) of a build for StyleGAN2-ADA.

    Args:
        source: build folder, its ``manifest.json``, or a URL of either.
        split: a split name, or ``all``.
        dest: ``*.zip`` for an archive (written atomically), or a path ending in ``/`` for a
            folder (must be absent or empty; filled under a temporary name, then renamed).
        uncompressed: re-encode PNGs at ``compress_level=0`` like ``dataset_tool.py``
            (about 1.8x bigger, about 2x faster to decode); default copies the shard PNGs unchanged.
        overwrite: replace an existing zip.
        progress: show a progress bar on stderr.

    Raises:
        UsageError: bad ``dest``, unknown split, a size StyleGAN2-ADA cannot train on.
        ShardgenError: a shard or sample is broken or a shard does not match the manifest
            (named in the message); ``dest`` cannot be written (full, read-only, another
            user's). Nothing is committed then.
    """
    build = open_build(source, storage_options)
    splits = build.splits if split == "all" else [split]
    for sp in splits:
        build.split(sp)  # unknown names fail here, before anything is written
    image = build.manifest.image
    size = image.size
    check_resolution(size)
    if image.mode != "L":
        raise UsageError(f"StyleGAN export needs 1-channel grayscale (mode L) images; this build has "
                         f"mode {image.mode}")
    classes = build.classes
    multi = build.manifest.multilabel
    kind, out_cls = _open_dest(dest, overwrite)
    total = sum(build.split(sp).samples for sp in splits)
    labels: list[list[Any]] = []
    counts = [0] * len(classes)
    with out_cls(dest) as out, progress_bar(total, "stylegan", "img", progress) as bar:
        for rel, smp in samples_of(build, splits):
            if "png" not in smp.parts:
                raise ShardgenError(f"{rel}: {smp.key}: sample lacks .png; run shardgen verify")
            found = labels_of(rel, smp, len(classes)) if multi else (label_of(rel, smp, len(classes)),)
            name = archive_name(len(labels))
            out.write(name, _image(rel, smp.key, smp.parts["png"], size, uncompressed))
            # multi-label: a list of floats per image, which StyleGAN2-ADA reads as label_dim = C
            labels.append([name, [1.0 if c in found else 0.0 for c in range(len(classes))] if multi else found[0]])
            for c in found:
                counts[c] += 1
            bar.update(1)
        if not labels:
            raise UsageError(f"split {split!r} has no samples; nothing to export")
        out.write("dataset.json", json.dumps({"labels": labels}).encode())
        nbytes = out.commit()
    return ExportResult(dest=dest, kind=kind, images=len(labels), splits=splits, size=size,
                        class_counts={c: n for c, n in zip(classes, counts)},
                        label_dim=len(classes) if multi else max(lbl for _, lbl in labels) + 1,
                        classes=len(classes), bytes=nbytes)
