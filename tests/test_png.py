"""The sample PNG codec (shardgen.format.png): the encoder's files, the loaders' fast decoder
for them, and the fall-back to Pillow for every other PNG."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from loaders.errors import LoaderError
from loaders.read.samples import RawSample, decode_into
from shardgen.format.png import decode_gray_png, encode_png


def _images():
    rng = np.random.default_rng(3)
    for n in (1, 7, 8, 32, 64, 255, 256, 257, 300, 520):  # widths off the 8-byte lanes, rows past 256
        yield rng.integers(0, 256, (n, n), dtype=np.uint8)
        yield (np.add.outer(np.arange(n), 3 * np.arange(n)) % 256).astype(np.uint8)  # long runs of wraps
    yield np.full((96, 96), 255, np.uint8)
    yield np.zeros((96, 96), np.uint8)


@pytest.mark.parametrize("a", list(_images()), ids=lambda a: f"{a.shape[0]}-{int(a.sum()) % 997}")
def test_fast_decoder_gives_the_pixels_pillow_gives(a):
    png = encode_png(a)
    pil = np.asarray(Image.open(io.BytesIO(png)))
    assert np.array_equal(pil, a)
    out = np.full(a.shape, 7, np.uint8)
    assert decode_gray_png(png, out)
    assert np.array_equal(out, a)
    strided = np.full((a.shape[0], 2 * a.shape[1]), 7, np.uint8)[:, ::2]  # a view that is not C-contiguous
    assert decode_gray_png(png, strided)
    assert np.array_equal(strided, a)


def _pillow_png(a, **kw) -> bytes:
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG", **kw)
    return b.getvalue()


def _with_chunk(png: bytes, tag: bytes, data: bytes) -> bytes:
    chunk = struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(tag)))
    return png[:33] + chunk + png[33:]  # right after IHDR


def test_other_pngs_are_left_to_pillow():
    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    out = np.empty((64, 64), np.uint8)
    ours = encode_png(a)
    assert decode_gray_png(ours, out)
    assert not decode_gray_png(_pillow_png(a), out)  # Pillow's adaptive filters (Sub, Paeth, ...)
    assert not decode_gray_png(ours, np.empty((32, 32), np.uint8))  # another size
    assert not decode_gray_png(_pillow_png(np.stack([a] * 3, -1)), out)  # RGB
    assert not decode_gray_png(_pillow_png(a.astype(np.uint16) * 257), out)  # 16-bit
    assert not decode_gray_png(_with_chunk(ours, b"PLTE", b"\x00" * 3), out)  # a critical chunk
    assert not decode_gray_png(b"not a png at all", out)
    assert not decode_gray_png(ours[:60], out)  # truncated
    for at in (41, 42, 100, len(ours) - 20):  # zlib header, first block, middle, Adler-32
        bad = bytearray(ours)
        bad[at] ^= 0x55
        assert not decode_gray_png(bytes(bad), out)
    # An ancillary chunk (tEXt) is skipped, as any PNG reader does.
    assert decode_gray_png(_with_chunk(ours, b"tEXt", b"Comment\x00hello"), out) and np.array_equal(out, a)


def _raw(png: bytes) -> RawSample:
    return RawSample(shard="train/train-000000.tar", key="k", png=png, cls=b"1")


def test_decode_into_decodes_any_8bit_gray_png_and_names_the_broken_one():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    for png in (encode_png(a), _pillow_png(a)):  # fast path, then Pillow's
        out = np.empty((48, 48), np.uint8)
        assert decode_into(out, _raw(png), 48, 4) == 1
        assert np.array_equal(out, a)
    bad = bytearray(encode_png(a))
    bad[80] ^= 0x55
    with pytest.raises(LoaderError, match=r"train-000000.tar: sample k: corrupt PNG"):
        decode_into(np.empty((48, 48), np.uint8), _raw(bytes(bad)), 48, 4)
    with pytest.raises(LoaderError, match="image is 48x48 mode L, expected 32x32"):
        decode_into(np.empty((32, 32), np.uint8), _raw(encode_png(a)), 32, 4)
