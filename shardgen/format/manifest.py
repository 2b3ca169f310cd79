"""``manifest.json`` and ``<split>/dataset.json`` as typed records (``docs/format.md``).

:meth:`Manifest.parse` validates a parsed JSON object once and gives typed entries;
:meth:`Manifest.to_json` gives back the exact object the build writes (key order
included), so a manifest read and written again is byte-identical. Fields this version
does not know are kept in ``extra`` and written back after the known ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .names import FORMAT, SPLIT_RE
from .sample import IMAGE_EXT
from .validate import (IMAGE_EXTS, IMAGE_MODES, MAX_CLASSES, MAX_IMAGE_SIZE, MAX_SAMPLES, MIN_SAMPLE_BYTES,
                       class_name_problem, is_hex16, key_problem, shard_path_problem, shown)

__all__ = ["SINGLE", "MULTILABEL", "TASKS", "ManifestError", "ShardEntry", "SplitEntry", "ImageSpec", "CodecVersions",
           "Manifest", "validate_manifest", "parse_dataset_json"]


#: The manifest's ``task``: one class per sample (absent from the manifest), or a set of classes.
SINGLE = "single"
MULTILABEL = "multilabel"
TASKS = (SINGLE, MULTILABEL)


class ManifestError(ValueError):
    """A manifest that is not a valid shardgen/1 manifest; ``problems`` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__(problems[0] if problems else "invalid manifest")
        self.problems = problems


@dataclass(frozen=True)
class ShardEntry:
    """One shard: ``path`` relative to the build, ``samples``, ``bytes``, ``xxh64`` of the file,
    and ``pixels_xxh64`` (None in builds made before it existed)."""

    path: str
    samples: int
    bytes: int
    xxh64: str
    pixels_xxh64: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"path": self.path, "samples": self.samples, "bytes": self.bytes, "xxh64": self.xxh64}
        if self.pixels_xxh64 is not None:
            d["pixels_xxh64"] = self.pixels_xxh64
        return d


@dataclass(frozen=True)
class SplitEntry:
    """One split: total ``samples``, ``class_counts`` (class name -> samples) and its shards."""

    samples: int
    class_counts: dict[str, int]
    shards: tuple[ShardEntry, ...]

    def to_json(self) -> dict[str, Any]:
        return {"samples": self.samples, "class_counts": dict(self.class_counts),
                "shards": [s.to_json() for s in self.shards]}


@dataclass(frozen=True)
class ImageSpec:
    """Every sample's image: ``size`` x ``size`` pixels, PIL ``mode``, member extension ``ext``;
    ``extra`` holds further fields (e.g. the encoder) as written."""

    size: int
    mode: str = "L"
    ext: str = IMAGE_EXT
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "mode": self.mode, "ext": self.ext, **self.extra}


@dataclass(frozen=True)
class CodecVersions:
    """Versions of the libraries the output bytes depend on (``config.codecs``).

    Decoding (Pillow and the libraries it bundles: libjpeg-turbo, zlib / zlib-ng,
    OpenJPEG, libtiff, libwebp; pydicom for DICOM), the pixel arithmetic (numpy) and the
    PNG encoder (libdeflate through the ``deflate`` binding) decide the bytes of a build:
    two processes whose versions are equal give the same bytes. A library that is not
    there (or that Pillow was built without) is None and left out of the JSON.
    """

    pillow: str
    numpy: str
    libdeflate: str
    deflate: str
    libjpeg_turbo: str | None = None
    zlib: str | None = None
    zlib_ng: str | None = None
    libpng: str | None = None
    openjpeg: str | None = None
    libtiff: str | None = None
    libwebp: str | None = None
    pydicom: str | None = None

    _ORDER = ("pillow", "libjpeg_turbo", "zlib", "zlib_ng", "libpng", "openjpeg", "libtiff", "libwebp",
              "libdeflate", "deflate", "numpy", "pydicom")

    def to_json(self) -> dict[str, str]:
        """``{"pillow": "13.0.0", ...}`` in a fixed order, without the missing libraries."""
        return {k: getattr(self, k) for k in self._ORDER if getattr(self, k) is not None}

    @classmethod
    def parse(cls, obj: Any) -> "CodecVersions | None":
        """From ``config.codecs``; None when absent or malformed (builds made before it existed)."""
        if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str)
                                                for k in ("pillow", "numpy", "libdeflate", "deflate")):
            return None
        return cls(**{k: str(obj[k]) for k in cls._ORDER if isinstance(obj.get(k), str)})

    def first_difference(self, other: "CodecVersions") -> tuple[str, str | None, str | None] | None:
        """``(library, this version, other version)`` of the first library that differs, else None."""
        for k in self._ORDER:
            if getattr(self, k) != getattr(other, k):
                return k, getattr(self, k), getattr(other, k)
        return None

    def describe(self) -> str:
        """``pillow 13.0.0, libjpeg_turbo 3.2.0, ...`` (one line)."""
        return ", ".join(f"{k} {v}" for k, v in self.to_json().items())


_KNOWN = ("format", "classes", "task", "image", "splits", "skipped", "report", "config", "shardgen_version")


@dataclass(frozen=True)
class Manifest:
    """A build's ``manifest.json``.

    ``task`` is ``"single"`` (written as no field at all, so single-label manifests are as
    they always were) or ``"multilabel"`` (written right after ``classes``).
    """

    classes: tuple[str, ...]
    image: ImageSpec
    splits: dict[str, SplitEntry]
    skipped: int = 0
    report: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    shardgen_version: str | None = None
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)
    task: str = SINGLE

    @property
    def multilabel(self) -> bool:
        """Each sample has a set of classes (a multi-hot target), not one class."""
        return self.task == MULTILABEL

    @property
    def samples(self) -> int:
        """Samples over all splits."""
        return sum(s.samples for s in self.splits.values())

    @property
    def codecs(self) -> CodecVersions | None:
        """The library versions that made the bytes (``config.codecs``; None in older builds)."""
        return CodecVersions.parse(self.config.get("codecs"))

    def shards(self) -> list[ShardEntry]:
        """Every shard, split by split."""
        return [sh for s in self.splits.values() for sh in s.shards]

    @classmethod
    def parse(cls, obj: Any) -> "Manifest":
        """Validate a parsed ``manifest.json`` and type it.

        Raises:
            ManifestError: with every structural problem found.
        """
        problems = validate_manifest(obj)
        if problems:
            raise ManifestError(problems)
        img = obj["image"]
        image = ImageSpec(img["size"], img.get("mode", "L"), img.get("ext", IMAGE_EXT),
                          {k: v for k, v in img.items() if k not in ("size", "mode", "ext")})
        splits = {}
        for name, s in obj["splits"].items():
            shards = tuple(ShardEntry(sh["path"], sh["samples"], sh["bytes"], sh["xxh64"], sh.get("pixels_xxh64"))
                           for sh in s["shards"])
            splits[name] = SplitEntry(s.get("samples", sum(sh.samples for sh in shards)),
                                      dict(s.get("class_counts") or {}), shards)
        return cls(classes=tuple(obj["classes"]), image=image, splits=splits, skipped=obj.get("skipped", 0),
                   report=dict(obj.get("report") or {}), config=dict(obj.get("config") or {}),
                   shardgen_version=obj.get("shardgen_version"), format=obj["format"],
                   extra={k: v for k, v in obj.items() if k not in _KNOWN}, task=obj.get("task", SINGLE))

    def to_json(self) -> dict[str, Any]:
        """The JSON object, in the order the build writes it."""
        d: dict[str, Any] = {"format": self.format, "classes": list(self.classes)}
        if self.task != SINGLE:
            d["task"] = self.task
        d.update({"image": self.image.to_json(), "splits": {k: v.to_json() for k, v in self.splits.items()},
                  "skipped": self.skipped, "report": dict(self.report), "config": dict(self.config)})
        if self.shardgen_version is not None:
            d["shardgen_version"] = self.shardgen_version
        d.update(self.extra)
        return d


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _shard_problem(name: str, i: int, sh: Any, seen: set[str]) -> str | None:
    """Why shard entry ``i`` of split ``name`` is not valid (None when it is)."""
    where = f"splits.{name}.shards[{i}]"
    if not isinstance(sh, dict) or not all(k in sh for k in ("path", "samples", "bytes", "xxh64")):
        return f"{where}: a shard entry needs path, samples, bytes and xxh64"
    bad = shard_path_problem(sh["path"], name)
    if bad:
        return f"{where}.{bad}"
    if sh["path"] in seen:
        return f"{where}.path: {shown(sh['path'])} is listed twice"
    seen.add(sh["path"])
    for k in ("samples", "bytes"):
        if not _is_count(sh[k]):
            return f"{where}.{k}: {shown(sh[k])} is not a non-negative integer"
    if sh["samples"] > sh["bytes"] // MIN_SAMPLE_BYTES:
        return (f"{where}.samples: {sh['samples']:,} samples cannot fit in {sh['bytes']:,} bytes "
                f"(a sample takes at least {MIN_SAMPLE_BYTES} bytes)")
    for k in ("xxh64", "pixels_xxh64"):
        if (k == "xxh64" or sh.get(k) is not None) and not is_hex16(sh.get(k)):
            return f"{where}.{k}: {shown(sh.get(k))} is not 16 lowercase hex digits"
    return None


def _image_problem(image: Any) -> str | None:
    if not isinstance(image, dict) or not _is_count(image.get("size")):
        return "image.size: 'image' must hold an integer 'size'"
    if not 1 <= image["size"] <= MAX_IMAGE_SIZE:
        return f"image.size: {image['size']} is not from 1 to {MAX_IMAGE_SIZE}"
    if image.get("ext", IMAGE_EXT) not in IMAGE_EXTS:
        return f"image.ext: {shown(image.get('ext'))} is not one of {', '.join(IMAGE_EXTS)}"
    if image.get("mode", "L") not in IMAGE_MODES:
        return f"image.mode: {shown(image.get('mode'))} is not one of {', '.join(IMAGE_MODES)}"
    return None


def _classes_problem(classes: Any) -> str | None:
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        return "classes: 'classes' must be a non-empty list of names"
    if len(classes) > MAX_CLASSES:
        return f"classes: {len(classes):,} classes, more than the {MAX_CLASSES:,} a build may have"
    for i, c in enumerate(classes):
        bad = class_name_problem(c)
        if bad:
            return f"classes[{i}]: {bad}"
    if len(set(classes)) != len(classes):
        twice = next(c for c in classes if classes.count(c) > 1)
        return f"classes: {shown(twice)} is listed twice"
    return None


def _split_problem(name: Any, s: Any, classes: Any, seen: set[str]) -> str | None:
    """Why split ``name`` is not valid: its name, its shards, and counts that agree."""
    if not isinstance(name, str) or not SPLIT_RE.match(name) or len(name) > 64:
        return f"splits: bad split name {shown(name)}"
    if not isinstance(s, dict) or not isinstance(s.get("shards"), list):
        return f"splits.{name}: split {name!r} has no 'shards' list"
    for i, sh in enumerate(s["shards"]):
        bad = _shard_problem(name, i, sh, seen)
        if bad:
            return bad
    total = sum(sh["samples"] for sh in s["shards"])
    if "samples" in s and s["samples"] != total:
        return f"splits.{name}.samples: {shown(s['samples'])}, but its shards hold {total:,}"
    counts = s.get("class_counts")
    if counts is not None:
        if not isinstance(counts, dict):
            return f"splits.{name}.class_counts: not an object"
        names = set(classes) if isinstance(classes, list) else set()
        for c, n in counts.items():
            if c not in names:
                return f"splits.{name}.class_counts: {shown(c)} is not one of the build's classes"
            if not _is_count(n) or n > total:
                return f"splits.{name}.class_counts.{shown(c)}: {shown(n)} is not a count of at most {total:,}"
    return None


def validate_manifest(m: Any) -> list[str]:
    """Every problem of a parsed manifest (empty when valid), each ``field: what is wrong``.

    Beyond the structure, the values must be safe to use (``docs/security.md``): shard
    paths inside the build and listed once, checksums of 16 hex digits, sizes and counts
    that agree with each other and stay within :mod:`.validate`'s bounds, class names
    without control characters, an image extension and mode from the allow-lists.
    """
    if not isinstance(m, dict):
        return ["manifest is not a JSON object"]
    problems: list[str] = []
    if m.get("format") != FORMAT:
        problems.append(f"format: unknown format {shown(m.get('format'))} (expected {FORMAT!r})")
    classes = m.get("classes")
    problems += [p for p in (_classes_problem(classes), _image_problem(m.get("image"))) if p]
    if m.get("task", SINGLE) not in TASKS:
        problems.append(f"task: unknown task {shown(m.get('task'))} (expected one of {', '.join(TASKS)})")
    if "skipped" in m and not _is_count(m["skipped"]):
        problems.append(f"skipped: {shown(m['skipped'])} is not a count")
    splits = m.get("splits")
    if not isinstance(splits, dict) or not splits:
        problems.append("splits: 'splits' must be a non-empty object")
        return problems
    seen: set[str] = set()
    for name, s in splits.items():
        bad = _split_problem(name, s, classes, seen)
        if bad:
            problems.append(bad)
    if not problems:
        total = sum(sh["samples"] for s in splits.values() for sh in s["shards"])
        if total > MAX_SAMPLES:
            problems.append(f"splits: {total:,} samples, more than the {MAX_SAMPLES:,} a build may have")
    return problems


def _vector(v: Any) -> tuple[int, ...] | None:
    """The class indices of a multi-hot list of 0/1 numbers, or None when it is not one."""
    if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                          and x in (0, 1) for x in v):
        return None
    return tuple(i for i, x in enumerate(v) if x == 1)


def parse_dataset_json(raw: bytes) -> list[tuple[str, Any]]:
    """``<split>/dataset.json`` (StyleGAN2-ADA labels) -> ``[(key, label), ...]`` in shard order.

    The label is the class index (an int) of a single-label build, or the tuple of class
    indices set in the multi-hot vector (a list of 0.0/1.0) of a multi-label build.

    Raises:
        ValueError: not ``{"labels": [["<key>.<ext>", int or [0.0|1.0, ...]], ...]}``.
    """
    d = json.loads(raw)
    labels = d.get("labels") if isinstance(d, dict) else None
    if not isinstance(labels, list):
        raise ValueError("no 'labels' list")
    out = []
    for e in labels:
        if not (isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)):
            raise ValueError(f"bad label entry {shown(json.dumps(e))}")
        label = e[1] if _is_count(e[1]) else _vector(e[1])
        if label is None:
            raise ValueError(f"bad label entry {shown(json.dumps(e))}")
        key = e[0].split(".", 1)[0]
        bad = key_problem(key)
        if bad:
            raise ValueError(bad)
        out.append((key, label))
    return out
