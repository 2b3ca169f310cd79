"""The sample schema (``docs/format.md``, "Samples"): member names and member encodings.

Each sample is three members sharing a key: ``<key>.png`` (8-bit grayscale PNG),
``<key>.cls`` (the class index as ASCII decimal digits) and ``<key>.json`` (compact UTF-8
JSON: ``class``, ``source`` [, ``source_raw``], ``width``, ``height``, ``mode``, ``pixels``
[, ``dicom``]).

In a multi-label build (manifest ``task`` ``"multilabel"``) the ``.cls`` member is replaced
by ``<key>.labels.npy``, the multi-hot target (a float32 ``.npy`` vector of length C, which
stock webdataset decodes with ``numpy.load``), and the ``.json`` holds ``labels`` (class
indices) and ``label_names`` instead of ``class``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote_from_bytes

import xxhash

__all__ = ["IMAGE_EXT", "CLS_EXT", "JSON_EXT", "LABELS_EXT", "MEMBERS", "MULTILABEL_MEMBERS", "SampleMeta",
           "encode_cls", "LabelError", "read_target", "encode_multihot", "decode_multihot", "multihot_header", "path_fields",
           "pixels_digest", "shard_pixels_xxh64", "sample_members", "multilabel_members"]

IMAGE_EXT = "png"
CLS_EXT = "cls"
JSON_EXT = "json"
#: The multi-hot target of a multi-label sample (a float32 ``.npy`` vector).
LABELS_EXT = "labels.npy"
#: Member extensions of every sample, in the order they are written.
MEMBERS = (IMAGE_EXT, CLS_EXT, JSON_EXT)
#: Member extensions of every sample of a multi-label build, in the order they are written.
MULTILABEL_MEMBERS = (IMAGE_EXT, LABELS_EXT, JSON_EXT)


def encode_cls(index: int) -> bytes:
    """``3`` -> ``b"3"``."""
    return str(int(index)).encode("ascii")


#: A valid ``.cls`` member: ASCII decimal digits, at most one newline after them.
_CLS_RE = re.compile(rb"^[0-9]{1,9}\n?$")


class LabelError(ValueError):
    """A sample's target member that is not a valid target of its build; the message is the reason."""


def read_target(raw: bytes | None, n_classes: int, multilabel: bool = False) -> int | tuple[int, ...]:
    """One sample's target from its member's bytes, checked against the build: the one reader
    of targets (the loaders, ``verify`` and the exports all read them here).

    Args:
        raw: the ``.cls`` member (single-label) or the ``.labels.npy`` member (multi-label);
            None when the sample has none.
        n_classes: C, the build's class count.
        multilabel: read a ``.labels.npy`` multi-hot vector instead of a ``.cls`` index.

    Returns:
        The class index in ``[0, C)``, or the sorted class indices a multi-hot vector sets.

    Raises:
        LabelError: the member is missing, not a decimal class index, out of range, or not a
            0/1 float32 vector of C values.
    """
    if raw is None:
        raise LabelError(f"no .{LABELS_EXT if multilabel else CLS_EXT} member")
    if multilabel:
        try:
            return decode_multihot(raw, n_classes)
        except ValueError as e:
            raise LabelError(f".{LABELS_EXT}: {e}") from None
    if not _CLS_RE.match(raw):
        raise LabelError(f".{CLS_EXT} is not a decimal class index: {raw[:20]!r}")
    v = int(raw)
    if v >= n_classes:
        raise LabelError(f"label {v} out of range (0..{n_classes - 1})")
    return v


def multihot_header(n: int) -> bytes:
    """The ``.npy`` (format 1.0) header of a float32 vector of ``n`` values, as ``numpy.save``
    writes it: magic, version, header length, the dict padded with spaces to 64 bytes."""
    d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }" % n
    pad = -(10 + len(d) + 1) % 64
    text = (d + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def encode_multihot(indices: Iterable[int], n: int) -> bytes:
    """The ``.labels.npy`` member: float32 ``[n]`` vector, 1.0 at ``indices``, else 0.0."""
    on = set(indices)
    one, zero = b"\x00\x00\x80\x3f", b"\x00\x00\x00\x00"  # 1.0 and 0.0, little-endian float32
    return multihot_header(n) + b"".join(one if i in on else zero for i in range(n))


def decode_multihot(data: bytes, n: int) -> tuple[int, ...]:
    """The class indices set in a ``.labels.npy`` member of ``n`` classes.

    Raises:
        ValueError: not the exact header of a float32 vector of ``n`` values, the wrong
            length, or a value other than 0.0 and 1.0.
    """
    head = multihot_header(n)
    if not data.startswith(head) or len(data) != len(head) + 4 * n:
        raise ValueError(f"not a float32 .npy vector of {n} values")
    out = []
    for i in range(n):
        v = data[len(head) + 4 * i:len(head) + 4 * i + 4]
        if v == b"\x00\x00\x80\x3f":
            out.append(i)
        elif v != b"\x00\x00\x00\x00":
            raise ValueError(f"value {i} is neither 0.0 nor 1.0")
    return tuple(out)


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
        labels: multi-label builds: the class indices (``labels``), in class order; then
            ``cls`` is unused and ``label_names`` holds their names.
        label_names: the names of ``labels``.
    """

    cls: str | None
    source: str
    width: int
    height: int
    mode: str
    pixels: str
    dicom: dict | None = None
    labels: tuple[int, ...] | None = None
    label_names: tuple[str, ...] = ()

    def to_bytes(self) -> bytes:
        """The member's bytes: compact JSON, fields in the documented order."""
        head = ({"class": self.cls} if self.labels is None
                else {"labels": list(self.labels), "label_names": list(self.label_names)})
        d = {**head, **path_fields(self.source, "source"), "width": self.width,
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


def multilabel_members(png: bytes, indices: Iterable[int], n_classes: int, meta_json: bytes) -> dict[str, bytes]:
    """``{ext: bytes}`` of one multi-label sample in member order (:data:`MULTILABEL_MEMBERS`).

    Args:
        png: the image member.
        indices: the sample's class indices (none: an all-zero target).
        n_classes: C, the length of the multi-hot vector.
        meta_json: the ``.json`` member, :meth:`SampleMeta.to_bytes`.
    """
    return {IMAGE_EXT: png, LABELS_EXT: encode_multihot(indices, n_classes), JSON_EXT: meta_json}
