"""DICOM sources: recognise them, decode them with pydicom, and map their values to 8 bits.

A file is DICOM when its name ends in ``.dcm`` or ``.dicom``, or when it holds ``DICM``
at byte 128 (the DICOM preamble; CR exports often have no extension). pydicom and its
decoder plugins (pylibjpeg with libjpeg, openjpeg and rle) are imported only when the
first DICOM file is decoded, so importing shardgen stays fast and free of side effects.

What :func:`decode_dicom` does to one single-frame image (``docs/dicom.md`` for users):

1. **Modality LUT**: ``pydicom.pixels.apply_modality_lut`` (Rescale Slope/Intercept or a
   Modality LUT Sequence): stored values become modality units (Hounsfield units for CT).
2. **VOI** (``--dicom_window auto``, the default): the first VOI LUT of the VOI LUT
   Sequence when there is one, else the first window (Window Center/Width, with its VOI
   LUT Function), through ``pydicom.pixels.apply_voi_lut`` (``index=0``). A window whose
   values are unusable (not numbers, width below 1) counts as absent. ``--dicom_window
   none`` skips this step.
3. **8 bits**: ``v8 = round((clip(v, lo, hi) - lo) * 255 / (hi - lo))`` (float64, ties to
   even), where ``lo..hi`` is the output range of step 2: for a window, the range pydicom
   maps it onto (``0..2**BitsStored-1``, or the signed range when Pixel Representation is
   1, or ``0..2**n-1`` with ``n`` from the Modality LUT's descriptor; then through Rescale
   Slope/Intercept when present), so values below the window are 0 and above it 255; for
   a VOI LUT, its lowest and highest entries; without either, the image's own minimum and
   maximum after step 1. ``hi == lo`` gives a black image.
4. **MONOCHROME1** (white = low values): ``v8 = 255 - v8``.

Colour images (RGB, YBR_* which pydicom converts to RGB, PALETTE COLOR through its
palette) are scaled to 8 bits per channel from Bits Stored and then follow the luma rule
of colour PNGs (``shardgen.imaging.image.to_gray``). Multi-frame images, files without pixel data,
truncated pixel data, transfer syntaxes with no installed decoder, and compressed frames
whose codestream header (:mod:`shardgen.imaging.codestream`) disagrees with Rows, Columns and
Samples per Pixel or exceeds ``max_pixels`` (checked before any decoder allocates) raise
:class:`DicomSkip` with the reason. Only the attributes in :class:`DicomInfo` leave this
module: never a name, an ID, a date or any other patient data.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np

from .codestream import frame_problem
from .dicom_info import DicomInfo

__all__ = ["DICOM_EXTENSIONS", "DICOM_WINDOWS", "DicomSkip", "DicomImage", "has_dicom_magic",
           "sniff_dicom", "is_dicom", "to_uint8", "decode_dicom"]

#: File name extensions read as DICOM (lower case).
DICOM_EXTENSIONS = frozenset({".dcm", ".dicom"})
#: Values of ``--dicom_window``: ``auto`` (first VOI LUT or window, else full range) or ``none``.
DICOM_WINDOWS = ("auto", "none")
_MAGIC_AT, _MAGIC = 128, b"DICM"
#: A DICOM Code String (CS): the only kind of attribute value recorded besides numbers.
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
_MONO = ("MONOCHROME1", "MONOCHROME2")
#: Transfer syntaxes whose decoders size their output from the frame's own codestream header
#: (JPEG, JPEG-LS, JPEG 2000, HTJ2K): checked by :func:`shardgen.imaging.codestream.frame_problem` first.
_CODESTREAM_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 92, 93,
                                                                      201, 202, 203))


class DicomSkip(Exception):
    """The DICOM file is skipped; the message is the reason (``skipped.jsonl``)."""


@dataclass(frozen=True)
class DicomImage:
    """A decoded DICOM image.

    Attributes:
        pixels: HxW uint8 (monochrome, after the steps in the module docstring) or HxWx3
            uint8 RGB (colour, not yet reduced to gray).
        mode: the PIL mode that holds the stored pixels (``L``, ``I;16``, ``I``, ``F``, ``RGB``, ``P``).
        info: the audit attributes.
    """

    pixels: np.ndarray
    mode: str
    info: DicomInfo


def has_dicom_magic(head: bytes) -> bool:
    """True when ``head`` (a file's first bytes) holds ``DICM`` at offset 128."""
    return head[_MAGIC_AT:_MAGIC_AT + len(_MAGIC)] == _MAGIC


def sniff_dicom(path: str) -> bool:
    """True when the file at ``path`` has the DICOM preamble (reads its first 132 bytes)."""
    try:
        with open(path, "rb") as f:
            return has_dicom_magic(f.read(_MAGIC_AT + len(_MAGIC)))
    except OSError:
        return False


def is_dicom(name: str, data: bytes) -> bool:
    """True when a file named ``name`` with contents ``data`` is read as DICOM."""
    return os.path.splitext(name)[1].lower() in DICOM_EXTENSIONS or has_dicom_magic(data)


def _code(ds, keyword: str) -> str | None:
    """A Code String attribute, or None when absent or not a plain code (so no free text leaks)."""
    v = ds.get(keyword)
    v = str(v).strip() if v is not None and not isinstance(v, (list, tuple)) else ""
    return v if _CODE_STRING.fullmatch(v) else None


def _as_int(ds, keyword: str, default: int | None = None) -> int | None:
    v = ds.get(keyword, default)
    try:
        return int(v) if v is not None and v != "" else default
    except (TypeError, ValueError):
        raise DicomSkip(f"DICOM {keyword} is not a number: {str(v)[:20]!r}") from None


def _read(data: bytes, caught: list):
    """The dataset, with a Transfer Syntax UID even when the file has no meta header.

    ``caught`` is the list of warnings being recorded: pydicom only warns when the file
    ends inside an element (and drops what it could not read), which is a truncated file.
    """
    import pydicom
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except MemoryError:
        raise
    except Exception as e:  # pydicom raises many types for a damaged header
        raise DicomSkip(f"not a readable DICOM file: {str(e)[:200] or type(e).__name__}") from None
    eof = [str(w.message) for w in caught if "end of file" in str(w.message).lower()]
    if eof:
        raise DicomSkip(f"truncated DICOM file: {eof[0][:200]}")
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        uid = "1.2.840.10008.1.2" if implicit else ("1.2.840.10008.1.2.1" if little else "1.2.840.10008.1.2.2")
        ds.file_meta.TransferSyntaxUID = UID(uid)
    return ds


def _check(ds, max_pixels: int):
    """Refuse what is not one decodable image; returns the transfer syntax UID."""
    from pydicom.pixels import get_decoder

    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        what = ds.get("SOPClassUID")
        what = str(getattr(what, "name", "") or _code(ds, "Modality") or "")
        if not what:
            raise DicomSkip("not a DICOM image: no pixel data and no SOP Class UID")
        if "Rows" in ds or "image" in what.lower():
            # An image IOD must have Pixel Data: pydicom drops an element cut off by the end of the file.
            raise DicomSkip(f"truncated DICOM file: {what} without its pixel data")
        raise DicomSkip(f"DICOM file without pixel data ({what})")
    frames = _as_int(ds, "NumberOfFrames", 1)
    if frames != 1:
        raise DicomSkip(f"multi-frame DICOM ({frames} frames): only single images are supported")
    rows, cols = _as_int(ds, "Rows", 0), _as_int(ds, "Columns", 0)
    if not rows or not cols:
        raise DicomSkip(f"DICOM image without a size (Rows {rows}, Columns {cols})")
    if max_pixels and rows * cols > max_pixels:
        raise DicomSkip(f"decompression bomb: {cols}x{rows} = {rows * cols} pixels > limit {max_pixels}")
    samples = _as_int(ds, "SamplesPerPixel", 1)
    if samples not in (1, 3):
        raise DicomSkip(f"DICOM Samples per Pixel is {samples}: only 1 (gray) or 3 (colour) are supported")
    ts = ds.file_meta.TransferSyntaxUID
    named = f"{ts.name} ({ts})" if ts.name != str(ts) else str(ts)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise DicomSkip(f"unsupported DICOM transfer syntax {named}: no decoder exists") from None
    if not decoder.is_available:
        raise DicomSkip(f"unsupported DICOM transfer syntax {named}: no decoder installed")
    if ts in _CODESTREAM_SYNTAXES and "PixelData" in ds:  # the decoder sizes its output from the codestream
        problem = frame_problem(_first_frame(ds), cols, rows, samples, max_pixels)
        if problem:
            raise DicomSkip(problem)
    return ts


def _first_frame(ds) -> bytes:
    """The encapsulated frame (its fragments joined), undecoded."""
    from pydicom.encaps import generate_frames

    try:
        return next(generate_frames(ds.PixelData, number_of_frames=1))
    except Exception as e:  # pydicom raises several types for a broken item structure
        raise DicomSkip(f"malformed encapsulated DICOM pixel data: {str(e)[:200] or type(e).__name__}") from None


def _pixel_array(ds, ts) -> np.ndarray:
    """Decode the pixel data; truncated or undecodable data becomes a :class:`DicomSkip`."""
    try:
        return ds.pixel_array
    except MemoryError:
        raise
    except Exception as e:
        msg = str(e).strip().replace("\n", " ")[:300] or type(e).__name__
        low = msg.lower()
        if isinstance(e, EOFError) or any(s in low for s in ("less than expected", "truncat", "end of file")):
            raise DicomSkip(f"truncated DICOM pixel data: {msg}") from None
        raise DicomSkip(f"cannot decode DICOM pixel data ({ts.name}): {msg}") from None


def _first_number(v) -> float:
    """The first value of a DS attribute that may hold several (Window Center, Window Width)."""
    if isinstance(v, (str, bytes, float, int)):
        return float(v)
    return float(v[0])


def _window(ds, choice: str) -> DicomInfo | None:
    """The VOI step ``--dicom_window`` ``choice`` uses on ``ds`` (window fields only), None for none."""
    if choice == "none":
        return None
    seq = ds.get("VOILUTSequence")
    if seq:
        return DicomInfo("", 0, "voi_lut")
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    try:
        c, w = _first_number(ds.WindowCenter), _first_number(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    if not (np.isfinite(c) and np.isfinite(w)) or w < 1:
        return None
    fn = ds.get("VOILUTFunction")
    fn = _code(ds, "VOILUTFunction") if fn else None
    return DicomInfo("", 0, "window", c, w, fn)


def _window_range(ds) -> tuple[float, float]:
    """The output range pydicom maps a window onto (``apply_windowing``'s y_min..y_max)."""
    bits = int(ds.BitsStored)
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2 ** bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return lo, hi


def _voi_lut_range(ds) -> tuple[float, float]:
    """The lowest and highest entries of the first VOI LUT, as pydicom reads them."""
    from pydicom.pixels import apply_voi_lut

    desc = ds.VOILUTSequence[0].LUTDescriptor
    n, first = int(desc[0]) or 65536, int(desc[1])
    out = apply_voi_lut(np.arange(first, first + n, dtype=np.int64), ds, index=0, prefer_lut=True)
    return float(np.min(out)), float(np.max(out))


def to_uint8(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``round((clip(v, lo, hi) - lo) * 255 / (hi - lo))`` as uint8 (float64, ties to even);
    all zeros when ``hi <= lo``."""
    a = np.asarray(v)
    if not hi > lo:
        return np.zeros(a.shape, np.uint8)
    if a.dtype.kind == "f" and np.isnan(a).any():
        a = np.nan_to_num(a)
    out = np.clip(a, np.float64(lo), np.float64(hi))  # a new float64 array, worked on in place
    out -= lo
    out *= 255.0
    out /= hi - lo
    return np.rint(out, out=out).astype(np.uint8)


#: Integer images spanning at most this many values are converted through a lookup table.
_LUT_MAX_SPAN = 1 << 17


def _gray(ds, arr: np.ndarray, choice: str) -> tuple[np.ndarray, DicomInfo | None]:
    """Steps 1 to 4 of the module docstring for a monochrome image.

    Every step is elementwise, so an integer image is converted by running the steps once
    over each value from its minimum to its maximum and indexing that 8-bit table with
    the image: the same numbers, several times faster than over every pixel.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    win = _window(ds, choice)
    table, base, present = arr, 0, None
    if arr.dtype.kind in "iu" and arr.size:
        base = int(arr.min())
        span = int(arr.max()) - base + 1
        if span <= min(_LUT_MAX_SPAN, arr.size):
            idx = np.subtract(arr, base, dtype=np.int64)
            table, present = np.arange(base, base + span).astype(arr.dtype), np.bincount(idx.ravel()) > 0
    m = apply_modality_lut(table, ds)
    if win is None:
        seen = m if present is None else m[present]  # the image's own values only
        out = to_uint8(m, float(np.nanmin(seen)), float(np.nanmax(seen)))
    elif win.window == "voi_lut":
        out = to_uint8(apply_voi_lut(m, ds, index=0, prefer_lut=True), *_voi_lut_range(ds))
    else:
        out = to_uint8(apply_voi_lut(m, ds, index=0, prefer_lut=False), *_window_range(ds))
    if str(ds.PhotometricInterpretation) == "MONOCHROME1":
        out = 255 - out
    return (out if present is None else out[idx]), win


def _colour(ds, arr: np.ndarray, photometric: str) -> np.ndarray:
    """HxWx3 uint8 RGB of a colour image (palette applied; more than 8 bits scaled down)."""
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        arr = apply_color_lut(arr, ds)
        top = 255 if arr.dtype == np.uint8 else 65535
    else:
        top = 2 ** int(ds.BitsStored) - 1
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DicomSkip(f"DICOM {photometric} image of shape {arr.shape} is not one RGB image")
    if arr.dtype == np.uint8 and top == 255:
        return np.ascontiguousarray(arr)
    a = arr.astype(np.uint64)
    return ((a * 255 + top // 2) // top).clip(0, 255).astype(np.uint8)


def _mode(ds, arr: np.ndarray, photometric: str) -> str:
    if photometric == "PALETTE COLOR":
        return "P"
    if photometric not in _MONO:
        return "RGB"
    if arr.dtype.kind == "f":
        return "F"
    return "L" if arr.dtype.itemsize == 1 else "I;16" if arr.dtype.itemsize == 2 else "I"


def decode_dicom(data: bytes, window: str = "auto", max_pixels: int = 0) -> DicomImage:
    """Decode one DICOM file's contents (see the module docstring).

    Args:
        data: the file's bytes.
        window: ``auto`` (default) or ``none``: see ``--dicom_window``.
        max_pixels: images with more pixels (Rows x Columns, and the size a compressed frame's
            codestream declares) are skipped; 0 means no limit.

    Raises:
        DicomSkip: not readable, no pixel data, multi-frame, truncated, a codestream that
            disagrees with the header or is too large, no decoder for its
            transfer syntax, or a photometric interpretation that is not supported.
    """
    # pydicom warns about many harmless quirks of real files; the user sees skips instead.
    with warnings.catch_warnings(record=True) as caught, np.errstate(all="ignore"):
        warnings.simplefilter("always")
        ds = _read(data, caught)
        ts = _check(ds, max_pixels)
        photometric = str(ds.get("PhotometricInterpretation", "")).strip()
        if photometric not in _MONO and photometric not in ("RGB", "PALETTE COLOR") \
                and not photometric.startswith("YBR_"):
            raise DicomSkip(f"DICOM photometric interpretation {photometric or '(none)'!r} is not supported")
        arr = _pixel_array(ds, ts)
        bits = _as_int(ds, "BitsStored", 0) or arr.dtype.itemsize * 8
        try:
            pixels, win = _convert(ds, arr, photometric, window)
        except (DicomSkip, MemoryError):
            raise
        except Exception as e:  # a malformed rescale, window or LUT attribute
            msg = str(e).strip().replace("\n", " ")[:200] or type(e).__name__
            raise DicomSkip(f"cannot apply the DICOM LUTs of this {photometric} image: {msg}") from None
        info = DicomInfo(photometric, bits, win.window, win.center, win.width, win.function,
                         _code(ds, "Modality"), _code(ds, "ViewPosition"), str(ts))
        return DicomImage(pixels, _mode(ds, arr, photometric), info)


def _convert(ds, arr: np.ndarray, photometric: str, window: str) -> tuple[np.ndarray, DicomInfo]:
    """``(pixels, window fields)`` of a decoded image: :func:`_gray` or :func:`_colour`."""
    if photometric in _MONO:
        if arr.ndim != 2:
            raise DicomSkip(f"DICOM {photometric} image of shape {arr.shape} is not one 2-D image")
        pixels, win = _gray(ds, arr, window)
    else:
        pixels, win = _colour(ds, arr, photometric), None
    return pixels, win or DicomInfo("", 0)
