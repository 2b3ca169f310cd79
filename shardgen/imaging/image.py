"""Decode any supported image, convert it to 8-bit grayscale, fit it to a square and encode it.

The per-image hot path of a build: PIL decodes (EXIF orientation, 16-bit, RGBA/LA,
palette and CMYK handled), PIL resizes with an antialiasing area (box) filter, and
:func:`shardgen.format.png.encode_png` (numpy "Up" filter + libdeflate level 1, ~10x
faster than Pillow's PNG writer) writes the result; that module says why this encoder
and records it (:func:`encoder_info`, in the manifest and the config fingerprint).
"""

from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..format.png import DEFLATE_LEVEL, encode_png, encoder_info
from ..format.sample import pixels_digest
from .dicom import DICOM_EXTENSIONS, DICOM_WINDOWS, DicomSkip, decode_dicom, is_dicom
from .dicom_info import DicomInfo

__all__ = [
    "IMAGE_EXTENSIONS",
    "FITS",
    "DEFAULT_MAX_PIXELS",
    "ImageOptions",
    "ImageSkip",
    "Processed",
    "to_gray",
    "fit_square",
    "encode_png",
    "encoder_info",
    "DEFLATE_LEVEL",
    "process_bytes",
    "configure_worker",
]

#: File extensions treated as images (lower case), DICOM's included; other files are images
#: when they start with the DICOM preamble (:func:`shardgen.imaging.dicom.sniff_dicom`).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pnm", ".jp2"}
) | DICOM_EXTENSIONS
FITS = ("pad", "crop", "stretch")
#: Largest accepted input, in pixels (width x height); larger files are skipped as decompression bombs.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class ImageOptions:
    """How a source image becomes a sample: every conversion option, in one picklable object.

    A new conversion step adds its field here and reads it in :func:`process_bytes`; the build
    makes the object from its config (:attr:`shardgen.build.config.BuildConfig.image_options`).

    Attributes:
        size: output side in pixels (default 256).
        fit: ``pad`` (default), ``crop`` or ``stretch``: see :func:`fit_square`.
        max_pixels: larger images are skipped as decompression bombs (default Pillow's 89,478,485).
        dicom_window: ``auto`` (default) or ``none``: the VOI step of DICOM images (``--dicom_window``).
        jpeg_draft: decode a JPEG at least twice the size the fit needs at libjpeg's DCT scale
            (1/2, 1/4 or 1/8) closest above that size, then resize (default True; ``--jpeg_draft``);
            False: always the full decode.

    Raises:
        ValueError: a value out of range, with the reason.
    """

    size: int = 256
    fit: str = "pad"
    max_pixels: int = DEFAULT_MAX_PIXELS
    dicom_window: str = "auto"
    jpeg_draft: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"size must be a positive integer, got {self.size!r}")
        if self.fit not in FITS:
            raise ValueError(f"fit must be one of {', '.join(FITS)}, got {self.fit!r}")
        if not isinstance(self.max_pixels, int) or self.max_pixels < 1:
            raise ValueError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")
        if self.dicom_window not in DICOM_WINDOWS:
            raise ValueError(f"dicom_window must be one of {', '.join(DICOM_WINDOWS)}, got {self.dicom_window!r}")

def configure_worker(max_pixels: int) -> None:
    """Set Pillow's own decompression-bomb limit to ``max_pixels`` in this process.

    Only for shardgen's own worker processes (the build's pool calls it): Pillow's limit
    is process-wide, so the library never changes it in its caller's process, where
    Pillow's limit applies on top of ``max_pixels``. Pillow's warning for images between
    its limit and twice it is silenced there: :func:`process_bytes` skips them with a
    reason instead.
    """
    Image.MAX_IMAGE_PIXELS = max(int(max_pixels), 1)
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageSkip(Exception):
    """A per-file problem: the file is skipped and reported with this reason."""


@dataclass(frozen=True)
class Processed:
    """One converted image.

    Attributes:
        png: the encoded 8-bit grayscale PNG (size x size).
        pixel_hash: xxh64 hex digest of the converted pixels (finds exact duplicates).
        width, height: the decoded image's size in pixels after its EXIF orientation is applied
            (as a viewer shows it; a 300x200 JPEG with orientation 6 gives 200x300).
        mode: the PIL mode of the decoded original.
        true_color: the original had colour channels that differ somewhere.
        dicom: the audit attributes of a DICOM source (:mod:`shardgen.imaging.dicom`), else None.
    """

    png: bytes
    pixel_hash: str
    width: int
    height: int
    mode: str
    true_color: bool
    dicom: DicomInfo | None = None


def _scale_high_bit_depth(a: np.ndarray) -> np.ndarray:
    """Rescale an integer image of more than 8 bits to 0..255 without clipping.

    The container is the smallest of 8/10/12/14/16/32 bits holding the maximum, so
    12-bit data stored in 16-bit PNGs keeps its brightness instead of turning black,
    and no value is clipped to white.
    """
    a = a.astype(np.int64)
    lo = int(a.min()) if a.size else 0
    if lo < 0:
        a = a - lo
    hi = int(a.max()) if a.size else 0
    for bits in (8, 10, 12, 14, 16, 32):
        if hi < (1 << bits):
            break
    top = (1 << bits) - 1
    return ((a * 255 + top // 2) // top).astype(np.uint8)


def to_gray(im: Image.Image) -> tuple[np.ndarray, bool]:
    """Convert a decoded PIL image to an 8-bit grayscale array.

    Returns:
        (array HxW uint8, true_color) where ``true_color`` says colour channels differed.
    """
    mode = im.mode
    true_color = False
    if mode == "L":
        return np.asarray(im), False
    if mode == "1":
        return np.asarray(im.convert("L")), False
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _scale_high_bit_depth(np.asarray(im)), False
    if mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.nan_to_num(a)
        hi = float(a.max()) if a.size else 0.0
        lo = min(0.0, float(a.min()) if a.size else 0.0)
        scale = 1.0 if (hi <= 1.0 and lo >= 0) else (hi - lo or 1.0)
        return np.clip(np.rint((a - lo) / scale * 255), 0, 255).astype(np.uint8), False
    if mode == "P":
        im = im.convert("RGBA")
        mode = "RGBA"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
        mode = "RGB"
    if mode in ("LA", "La", "PA"):
        a = np.asarray(im.convert("LA"))
        gray, alpha = a[..., 0].astype(np.uint16), a[..., 1].astype(np.uint16)
        return ((gray * alpha + 127) // 255).astype(np.uint8), False
    if mode in ("RGBA", "RGBa", "RGBX"):
        a = np.asarray(im.convert("RGBA"))
        rgb = a[..., :3]
        true_color = bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())
        alpha = a[..., 3:4].astype(np.uint16)
        rgb = ((rgb.astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
        im = Image.fromarray(rgb, "RGB")
        mode = "RGB"
        if not true_color:
            return np.ascontiguousarray(rgb[..., 0]), False
    if mode == "RGB":
        a = np.asarray(im)
        r, g, b = a[..., 0], a[..., 1], a[..., 2]
        if not true_color:
            true_color = bool((r != g).any() or (g != b).any())
        if not true_color:
            return np.ascontiguousarray(r), False
        return np.asarray(im.convert("L")), True
    # Anything else PIL knows how to turn into L.
    return np.asarray(im.convert("L")), False


def fit_square(a: np.ndarray, size: int, fit: str) -> np.ndarray:
    """Resize a grayscale array to ``size`` x ``size``.

    Args:
        a: HxW uint8 array.
        size: output side in pixels.
        fit: ``pad`` (letterbox with black, keeps everything), ``crop`` (centre crop to a
            square) or ``stretch`` (distort the aspect ratio).
    """
    h, w = a.shape
    if h != w and fit != "stretch":
        if fit == "crop":
            s = min(h, w)
            y0, x0 = (h - s) // 2, (w - s) // 2
            a = a[y0:y0 + s, x0:x0 + s]
        else:  # pad
            s = max(h, w)
            out = np.zeros((s, s), np.uint8)
            y0, x0 = (s - h) // 2, (s - w) // 2
            out[y0:y0 + h, x0:x0 + w] = a
            a = out
    if a.shape == (size, size):
        return np.ascontiguousarray(a)
    im = Image.fromarray(np.ascontiguousarray(a), "L")
    # BOX = exact area averaging when shrinking (antialiased); bilinear when enlarging.
    resample = Image.BOX if a.shape[0] >= size and a.shape[1] >= size else Image.BILINEAR
    return np.asarray(im.resize((size, size), resample))


def draft_size(width: int, height: int, size: int, fit: str) -> tuple[int, int] | None:
    """The smallest decoded size from which :func:`fit_square` still shrinks a ``width`` x
    ``height`` image to ``size`` (None: the image is not twice that, so no DCT scale applies)."""
    if fit == "stretch":
        need = (size, size)
    else:
        scale = size / (max(width, height) if fit == "pad" else min(width, height))
        need = (max(1, math.ceil(width * scale)), max(1, math.ceil(height * scale)))
    return need if width >= 2 * need[0] and height >= 2 * need[1] else None


def _open(fp, max_pixels: int, draft: tuple[int, str] | None = None) -> Image.Image:
    """Open and decode; ``draft``: ``(size, fit)`` lets a large JPEG decode at a DCT scale
    (:func:`draft_size`). The image's ``info["source_size"]`` is its size before any scaling."""
    try:
        im = Image.open(fp)
        w, h = im.size
        if max_pixels and w * h > max_pixels:
            raise ImageSkip(f"decompression bomb: {w}x{h} = {w * h} pixels > limit {max_pixels}")
        need = draft_size(w, h, *draft) if draft is not None and im.format == "JPEG" else None
        if need is not None:
            im.draft(None, need)
        im.load()
        im.info["source_size"] = (w, h)
    except ImageSkip:
        raise
    except UnidentifiedImageError:
        raise ImageSkip("not an image: cannot identify image file") from None
    except Image.DecompressionBombError as e:
        raise ImageSkip(f"decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError) as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg.lower() or isinstance(e, EOFError):
            raise ImageSkip(f"truncated image: {msg}") from None
        raise ImageSkip(f"cannot decode: {msg}") from None
    return im


def _finish(gray: np.ndarray, true_color: bool, width: int, height: int, mode: str, size: int, fit: str,
            dicom: DicomInfo | None = None) -> Processed:
    """Fit, resize and encode a converted grayscale image."""
    if gray.size == 0:
        raise ImageSkip(f"empty image ({width}x{height})")
    out = fit_square(gray, size, fit)
    return Processed(png=encode_png(out), pixel_hash=pixels_digest(out.tobytes()), width=width, height=height,
                     mode=mode, true_color=true_color, dicom=dicom)


def _process_dicom(data: bytes, size: int, fit: str, max_pixels: int, window: str) -> Processed:
    """A DICOM file: :func:`shardgen.imaging.dicom.decode_dicom`, then colour through :func:`to_gray`."""
    try:
        d = decode_dicom(data, window, max_pixels)
    except DicomSkip as e:
        raise ImageSkip(str(e)) from None
    height, width = d.pixels.shape[:2]
    gray, true_color = d.pixels, False
    if d.pixels.ndim == 3:
        gray, true_color = to_gray(Image.fromarray(d.pixels, "RGB"))
    return _finish(gray, true_color, width, height, d.mode, size, fit, d.info)


def process_bytes(data: bytes, options: ImageOptions, *, name: str = "") -> Processed:
    """Convert one encoded image (file contents) to the build's PNG.

    Args:
        data: the file's bytes.
        options: the conversion (:class:`ImageOptions`).
        name: the file's name; ``.dcm`` / ``.dicom`` (or the ``DICM`` preamble) selects DICOM.

    Raises:
        ImageSkip: the data is empty, not an image, truncated, too large or undecodable.
    """
    import io

    if not data:
        raise ImageSkip("zero-byte file")
    size, fit, max_pixels, dicom_window = options.size, options.fit, options.max_pixels, options.dicom_window
    if is_dicom(name, data):
        return _process_dicom(data, size, fit, max_pixels, dicom_window)
    im = _open(io.BytesIO(data), max_pixels, (size, fit) if options.jpeg_draft else None)
    (width, height), mode = im.info["source_size"], im.mode
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # broken EXIF is not a reason to drop the pixels
        orientation = 1
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        if orientation in (5, 6, 7, 8):  # as displayed: after the EXIF orientation
            width, height = height, width
    try:
        gray, true_color = to_gray(im)
    except (OSError, ValueError) as e:
        raise ImageSkip(f"cannot convert mode {mode}: {e}") from None
    return _finish(gray, true_color, width, height, mode, size, fit)
