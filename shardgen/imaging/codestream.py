"""Read the image size an encapsulated DICOM frame declares, without decoding it.

A JPEG, JPEG-LS or JPEG 2000 decoder allocates its output from the sizes in the
codestream's own header, not from the DICOM header's Rows and Columns: a 1 KB file whose
JPEG 2000 SIZ marker says 20000 x 20000 makes openjpeg allocate about 1.6 GB before it
fails. :func:`frame_problem` reads that header (a few hundred bytes, no decoder, no
allocation beyond the header itself) so that :mod:`shardgen.imaging.dicom` can skip such a file
before any decoder runs. What is read:

- **JPEG 2000 codestream** (``FF4F FF51``, J2K and HTJ2K): the SIZ marker segment, right
  after SOC: the image area ``(Xsiz - XOsiz) x (Ysiz - YOsiz)``, ``Csiz`` components and
  their precision, with the standard's constraints on the tile grid;
- **JP2 file** (the ``jP`` signature box): the ``ihdr`` box inside ``jp2h`` (HEIGHT, WIDTH,
  NC) and the SIZ of the codestream in its ``jp2c`` box, which must agree;
- **JPEG** (``FFD8``: baseline, extended, lossless, hierarchical, arithmetic) and
  **JPEG-LS** (``FFD8`` with SOF55, ``FFF7``): the first SOFn marker segment before any
  SOS: ``Y`` lines, ``X`` samples per line, ``Nf`` components, ``P`` bits. A ``Y`` or
  ``X`` of 0 (a size given later, by a DNL or LSE marker) is refused: the size must be
  known before decoding.

Everything here is pure Python on ``bytes``; nothing imports pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["Codestream", "CodestreamError", "parse_codestream", "frame_problem", "JP2_SIGNATURE"]

#: The first 12 bytes of a JP2 file (its signature box).
JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JPEG_SOI = b"\xff\xd8"
#: SOFn markers of ITU-T T.81 (not DHT C4, JPG C8, DAC CC) and JPEG-LS's SOF55 (F7).
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
#: Markers without a length field: TEM, RSTm, SOI.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8), 0xD8})
#: The most marker segments or boxes looked at before the size is found.
_MAX_SEGMENTS = 256


class CodestreamError(ValueError):
    """Not a JPEG / JPEG-LS / JPEG 2000 codestream, or one whose header cannot be read."""


@dataclass(frozen=True)
class Codestream:
    """What a codestream header declares.

    Attributes:
        kind: ``"JPEG 2000"``, ``"JP2"``, ``"JPEG"`` or ``"JPEG-LS"``.
        width, height: the image's size in pixels.
        components: colour components (1 gray, 3 colour).
        bits: the highest sample precision, in bits.
    """

    kind: str
    width: int
    height: int
    components: int
    bits: int


def _siz(data: bytes, at: int, kind: str) -> Codestream:
    """The SIZ segment of the J2K codestream starting at ``data[at]`` (``FF4F FF51``)."""
    if data[at:at + 4] != _J2K_SOC_SIZ:
        raise CodestreamError(f"{kind}: the codestream does not start with SOC and SIZ")
    head = data[at + 4:at + 42]
    if len(head) < 38:
        raise CodestreamError(f"{kind}: the SIZ marker segment is cut off")
    lsiz, _rsiz, x, y, xo, yo, xt, yt, xto, yto, c = struct.unpack(">HHIIIIIIIIH", head)
    comps = data[at + 42:at + 42 + 3 * c]
    if not 1 <= c <= 16384 or lsiz != 38 + 3 * c or len(comps) < 3 * c:
        raise CodestreamError(f"{kind}: SIZ declares {c} components in a segment of {lsiz} bytes")
    if not (x > xo and y > yo and xt and yt and xto <= xo and yto <= yo and xt + xto > xo and yt + yto > yo):
        raise CodestreamError(f"{kind}: SIZ declares an impossible image or tile grid "
                              f"({x}x{y}, offset {xo},{yo}, tiles {xt}x{yt} at {xto},{yto})")
    if any(comps[i + 1] == 0 or comps[i + 2] == 0 for i in range(0, 3 * c, 3)):
        raise CodestreamError(f"{kind}: SIZ declares a component subsampling of 0")
    bits = max((comps[i] & 0x7F) + 1 for i in range(0, 3 * c, 3))
    return Codestream(kind, x - xo, y - yo, c, bits)


def _boxes(data: bytes, start: int, end: int):
    """``(type, content start, content end)`` of the JP2 boxes in ``data[start:end]``."""
    at = start
    for _ in range(_MAX_SEGMENTS):
        if at + 8 > end:
            return
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        head = 8
        if length == 1:
            if at + 16 > end:
                raise CodestreamError("JP2: a box's 64-bit length is cut off")
            length, head = struct.unpack(">Q", data[at + 8:at + 16])[0], 16
        elif length == 0:
            length = end - at
        if length < head:
            raise CodestreamError(f"JP2: box {kind!r} declares {length} bytes")
        yield kind, at + head, min(end, at + length)
        at += length


def _jp2(data: bytes) -> Codestream:
    """The size of a JP2 file: its ``ihdr`` box and its codestream's SIZ, which must agree."""
    ihdr = code = None
    for kind, a, b in _boxes(data, 0, len(data)):
        if kind == b"jp2h":
            for sub, c, d in _boxes(data, a, b):
                if sub == b"ihdr" and d - c >= 14:
                    h, w, nc, bpc = struct.unpack(">IIHB", data[c:c + 11])
                    ihdr = (w, h, nc, (bpc & 0x7F) + 1)
        elif kind == b"jp2c":
            code = _siz(data, a, "JP2")
            break
    if ihdr is None or code is None:
        raise CodestreamError("JP2: no " + ("ihdr box in its jp2h header" if ihdr is None else "codestream box"))
    if ihdr[:3] != (code.width, code.height, code.components):
        raise CodestreamError(f"JP2: its ihdr box says {ihdr[0]}x{ihdr[1]} with {ihdr[2]} components, its "
                              f"codestream {code.width}x{code.height} with {code.components}")
    return code


def _jpeg(data: bytes) -> Codestream:
    """The first SOFn (or SOF55) segment of a JPEG / JPEG-LS codestream, before any SOS."""
    at = 2
    for _ in range(_MAX_SEGMENTS):
        while at < len(data) and data[at] == 0xFF and at + 1 < len(data) and data[at + 1] == 0xFF:
            at += 1  # fill bytes
        if at + 4 > len(data) or data[at] != 0xFF:
            break
        marker = data[at + 1]
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in (0xDA, 0xD9):  # SOS or EOI before any frame header
            break
        length = struct.unpack(">H", data[at + 2:at + 4])[0]
        if marker in _SOF:
            seg = data[at + 4:at + 2 + length]
            if length < 8 or len(seg) < 6:
                raise CodestreamError("JPEG: its frame header (SOF) is cut off")
            p, y, x, nf = struct.unpack(">BHHB", seg[:6])
            kind = "JPEG-LS" if marker == 0xF7 else "JPEG"
            if not x or not y:
                raise CodestreamError(f"{kind}: its frame header declares {x}x{y} (a size given later, "
                                      "by a DNL or LSE marker, is not accepted)")
            return Codestream(kind, x, y, nf, p)
        if length < 2:
            break
        at += 2 + length
    raise CodestreamError("JPEG: no frame header (SOF marker) before the scan data")


def parse_codestream(data: bytes) -> Codestream:
    """The header of a JPEG 2000 codestream, JP2 file, JPEG or JPEG-LS codestream.

    Raises:
        CodestreamError: none of these, or a header that is cut off or impossible.
    """
    data = bytes(data[:1 << 20]) if len(data) > 1 << 20 else bytes(data)  # headers sit at the start
    if data.startswith(_J2K_SOC_SIZ):
        return _siz(data, 0, "JPEG 2000")
    if data.startswith(JP2_SIGNATURE):
        return _jp2(data)
    if data.startswith(_JPEG_SOI):
        return _jpeg(data)
    raise CodestreamError(f"not a JPEG, JPEG-LS or JPEG 2000 codestream (starts with {data[:4].hex() or 'nothing'})")


def frame_problem(frame: bytes, columns: int, rows: int, samples: int, max_pixels: int) -> str | None:
    """Why a DICOM frame must not be decoded, or None when its codestream matches its header.

    Args:
        frame: the encapsulated frame (all its fragments).
        columns, rows, samples: the DICOM header's Columns, Rows and Samples per Pixel.
        max_pixels: the largest image accepted, in pixels (0: no limit).

    Returns:
        A skip reason (``decompression bomb: ...``, or ``DICOM pixel data does not match
        its header: ...``), or None.
    """
    try:
        cs = parse_codestream(frame)
    except CodestreamError as e:
        return f"unreadable DICOM codestream header: {e}"
    said = f"the {cs.kind} codestream says {cs.width}x{cs.height}"
    if max_pixels and cs.width * cs.height > max_pixels:
        return f"decompression bomb: {said} = {cs.width * cs.height} pixels > limit {max_pixels}"
    if (cs.width, cs.height) != (columns, rows):
        return f"DICOM pixel data does not match its header: {said}, Columns x Rows is {columns}x{rows}"
    if cs.components != samples:
        return (f"DICOM pixel data does not match its header: the {cs.kind} codestream has {cs.components} "
                f"components, Samples per Pixel is {samples}")
    return None
