"""The PNG bytes of a sample: shardgen's encoder and a fast decoder for what it writes.

Encoder: every row uses PNG filter 2 (Up: each byte minus the byte above it), computed
with numpy, and the filtered rows are compressed with libdeflate at
:data:`DEFLATE_LEVEL` in the zlib format, as one IDAT chunk. The file is a plain
8-bit grayscale PNG that any reader decodes (Pillow, libpng, DALI's nvJPEG/PNG path,
Hugging Face ``datasets``, StyleGAN2-ADA). Its bytes depend only on the pixels and
:func:`encoder_info`: libdeflate gives the same output on every CPU (no CPU-dependent
match finding, all state initialised), and the ``deflate`` wheel bundles it, so the
version is pinned with the package (issue 15 in ``docs/benchmarks.md``).

Why Up: undoing it is a running sum down each column, which numpy does for a whole
image at once (:func:`decode_gray_png`), so the loaders decode these files ~2-3x faster
than Pillow's general PNG decoder, whose per-pixel C loop also serves Average and
Paeth. Up costs ~3% more bytes than Average here, 1.09x Pillow's own PNG of the same
pixels (zlib level 6, adaptive filters).

Decoder: :func:`decode_gray_png` takes that fast path only for a file of exactly this
shape (8-bit grayscale, not interlaced, every row filtered with Up, no critical chunk
but IHDR, IDAT and IEND); for anything else it returns False and the caller decodes
with Pillow. Corrupt data fails the zlib stream's Adler-32 check or its length.
"""

from __future__ import annotations

import struct
import zlib

import deflate
import numpy as np

__all__ = ["DEFLATE_LEVEL", "PNG_FILTER", "encoder_info", "encode_png", "decode_gray_png"]

#: libdeflate compression level of the PNG data: 1, the fastest.
DEFLATE_LEVEL = 1
#: The PNG row filter every row uses (PNG filter type 2).
PNG_FILTER = "up"
_UP = 2
# libdeflate bundled in each ``deflate`` release (the binding does not report it at run time).
_LIBDEFLATE_OF_BINDING = {"0.9.0": "1.26"}
_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Each 16-bit lane of a uint64 holds one byte; 256 rows of 255 sum to < 65,536.
_LANES = np.uint64(0x00FF00FF00FF00FF)
_BLOCK = 256


def encoder_info() -> dict[str, str | int]:
    """The PNG encoder, as recorded in ``manifest.json`` (``image.encoder`` and ``config.encoder``).

    The same pixels give the same PNG bytes whenever these values are the same; a build
    resumed with another encoder is refused as a config change.

    Returns:
        ``{"name": "libdeflate", "version": "1.26", "binding": "deflate 0.9.0", "level": 1,
        "filter": "up"}`` (``version`` is ``"unknown"`` for a binding release not listed here).
    """
    return {"name": "libdeflate", "version": _LIBDEFLATE_OF_BINDING.get(deflate.__version__, "unknown"),
            "binding": f"deflate {deflate.__version__}", "level": DEFLATE_LEVEL, "filter": PNG_FILTER}


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))


def encode_png(a: np.ndarray) -> bytes:
    """Encode an HxW uint8 array as an 8-bit grayscale PNG (deterministic bytes).

    Lossless; ~0.4 ms for 256x256 on one core. The bytes depend only on the pixels and
    :func:`encoder_info`.

    Raises:
        ValueError: ``a`` is not a 2-D uint8 array.
    """
    if a.dtype != np.uint8 or a.ndim != 2:
        raise ValueError("encode_png takes a 2-D uint8 array")
    h, w = a.shape
    raw = np.empty((h, w + 1), np.uint8)
    raw[:, 0] = _UP
    raw[0, 1:] = a[0]
    np.subtract(a[1:], a[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG's does
    data = bytes(deflate.zlib_compress(raw, DEFLATE_LEVEL))
    return (_SIGNATURE + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))


def _idat(png: bytes, size: int) -> bytes | None:
    """The joined IDAT data of a ``size`` x ``size`` 8-bit grayscale, non-interlaced PNG
    whose only critical chunks are IHDR, IDAT and IEND; None for any other file."""
    if not png.startswith(_SIGNATURE) or png[12:16] != b"IHDR" or len(png) < 33:
        return None
    ihdr = png[16:29]
    if (png[8:12] != b"\x00\x00\x00\x0d" or ihdr != struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
            or struct.unpack(">I", png[29:33])[0] != zlib.crc32(ihdr, zlib.crc32(b"IHDR"))):
        return None
    parts, pos, end = [], 33, len(png)
    while pos + 12 <= end:
        n = int.from_bytes(png[pos:pos + 4], "big")
        tag = png[pos + 4:pos + 8]
        if tag == b"IEND":
            return b"".join(parts) if parts else None
        if tag == b"IDAT":
            parts.append(png[pos + 8:pos + 8 + n])
        elif not tag[:1].islower():  # a critical chunk this path does not handle (PLTE, ...)
            return None
        pos += 12 + n
    return None


def _undo_up(rows: np.ndarray, out: np.ndarray) -> None:
    """``out[r] = rows[r] + out[r - 1]`` (mod 256) for all rows: a running sum down each column.

    Byte lanes of uint64 words are summed 256 rows at a time (each byte in a 16-bit lane
    cannot overflow it), ~4x numpy's uint8 ``cumsum``; widths that are not a multiple of
    8, and an ``out`` that is not C-contiguous, take that ``cumsum``.
    """
    h, w = out.shape
    if w % 8 or not out.flags.c_contiguous:
        np.cumsum(rows, axis=0, dtype=np.uint8, out=out)
        return
    words = np.ascontiguousarray(rows).view(np.uint64)
    flat = out.view(np.uint64)
    for top in range(0, h, _BLOCK):
        blk = words[top:top + _BLOCK]
        lo = np.cumsum(blk & _LANES, axis=0, dtype=np.uint64)
        hi = np.cumsum((blk >> np.uint64(8)) & _LANES, axis=0, dtype=np.uint64)
        lo &= _LANES
        hi &= _LANES
        hi <<= np.uint64(8)
        np.bitwise_or(lo, hi, out=flat[top:top + _BLOCK])
        if top:
            out[top:top + _BLOCK] += out[top - 1]


def decode_gray_png(png: bytes, out: np.ndarray) -> bool:
    """Decode ``png`` into ``out`` (``S x S`` uint8) if it is a file :func:`encode_png` writes.

    Returns:
        True when decoded; False when the file is of another shape (other size, bit
        depth, colour type, interlacing, row filters or chunks) or its data is corrupt,
        with ``out`` then undefined: the caller decodes it another way (Pillow), which
        also names what is wrong.
    """
    size = out.shape[0]
    data = _idat(png, size)
    if data is None:
        return False
    try:
        # The first row's filter byte first (a few us): files of other encoders, such as
        # builds made before the Up filter, go to Pillow without a wasted inflate.
        if zlib.decompressobj().decompress(data[:256], 1) != bytes([_UP]):
            return False
        raw = deflate.zlib_decompress(data, size * (size + 1))
    except (zlib.error, deflate.DeflateError):
        return False
    if len(raw) != size * (size + 1):
        return False
    rows = np.frombuffer(raw, np.uint8).reshape(size, size + 1)
    if not (rows[:, 0] == _UP).all():
        return False
    _undo_up(rows[:, 1:], out)
    return True
