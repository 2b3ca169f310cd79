"""The sample schema (``docs/format.md``, "Samples"): member names and member encodings.

Each sample is three members sharing a key: ``<key>.png`` (8-bit grayscale PNG),
``<key>.cls`` (the class index as ASCII decimal digits) and ``<key>.json`` (compact UTF-8
JSON: ``class``, ``source`` [, ``source_raw``], ``width``, ``height``, ``mode``, ``pixels``
[, ``dicom``]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote_from_bytes

import xxhash

__all__ = ["IMAGE_EXT", "CLS_EXT", "JSON_EXT", "MEMBERS", "SampleMeta", "encode_cls", "decode_cls",
           "path_fields", "pixels_digest", "shard_pixels_xxh64", "sample_members"]

IMAGE_EXT = "png"
CLS_EXT = "cls"
JSON_EXT = "json"
#: Member extensions of every sample, in the order they are written.
MEMBERS = (IMAGE_EXT, CLS_EXT, JSON_EXT)


def encode_cls(index: int) -> bytes:
    """``3`` -> ``b"3"``."""
    return str(int(index)).encode("ascii")


def decode_cls(data: bytes) -> int:
    """``b"3"`` -> ``3``.

    Raises:
        ValueError: not ASCII decimal digits.
    """
    s = data.decode("ascii").strip()
    if not s.isdigit():
        raise ValueError(f"class index {data[:20]!r} is not a decimal number")
    return int(s)


def path_fields(path: str, name: str) -> dict[str, str]:
    """A source path as JSON fields: ``{name: text}``, plus ``{name}_raw`` when the path is not UTF-8.

    File names are bytes; JSON holds text. A path that is valid UTF-8 is written as it is.
    Otherwise ``name`` shows it with each undecodable byte as ``\\\\xNN`` (readable, lossy) and
    ``name + "_raw"`` holds the exact bytes percent-encoded (RFC 3986, ``/`` kept):
    ``urllib.parse.unquote_to_bytes(value)`` gives them back.
    """
    raw = path.encode("utf-8", "surrogateescape")
    try:
        return {name: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {name: raw.decode("utf-8", "backslashreplace"), f"{name}_raw": quote_from_bytes(raw, safe="/")}


def pixels_digest(pixels: bytes) -> str:
    """A sample's ``pixels``: xxh64 hex of its 8-bit pixels in row-major order."""
    return xxhash.xxh64_hexdigest(pixels)


def shard_pixels_xxh64(samples: Iterable[tuple[str, str]]) -> str:
    """A shard's ``pixels_xxh64`` from its ``(key, pixels)`` pairs in shard order:
    xxh64 of the UTF-8 bytes ``f"{key}\\x00{pixels}\\n"`` concatenated."""
    h = xxhash.xxh64()
    for key, pixels in samples:
        h.update(f"{key}\x00{pixels}\n".encode("utf-8"))
    return h.hexdigest()


@dataclass(frozen=True)
class SampleMeta:
    """The ``<key>.json`` member.

    Attributes:
        cls: class name (``class``).
        source: source path relative to SRC (see :func:`path_fields` for non-UTF-8 names).
        width, height: decoded size of the original in pixels, after EXIF orientation.
        mode: PIL mode of the decoded original.
        pixels: :func:`pixels_digest` of the sample's converted pixels.
        dicom: the audit attributes of a DICOM source (``dicom``, last), else None (field absent).
    """

    cls: str
    source: str
    width: int
    height: int
    mode: str
    pixels: str
    dicom: dict | None = None

    def to_bytes(self) -> bytes:
        """The member's bytes: compact JSON, fields in the documented order."""
        d = {"class": self.cls, **path_fields(self.source, "source"), "width": self.width,
             "height": self.height, "mode": self.mode, "pixels": self.pixels}
        if self.dicom is not None:
            d["dicom"] = self.dicom
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False).encode()


def sample_members(png: bytes, cls_index: int, meta_json: bytes) -> dict[str, bytes]:
    """``{ext: bytes}`` of one sample in member order, ready for :meth:`ShardWriter.add`.

    Args:
        png: the image member.
        cls_index: the class index.
        meta_json: the ``.json`` member, :meth:`SampleMeta.to_bytes`.
    """
    return {IMAGE_EXT: png, CLS_EXT: encode_cls(cls_index), JSON_EXT: meta_json}
