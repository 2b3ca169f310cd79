"""The versions of the libraries a build's bytes depend on, as this process has them.

A build records them in ``manifest.json`` ``config.codecs``
(:class:`~shardgen.format.CodecVersions`); a resumed build, and every worker of a
distributed build, must have the same ones, else the same inputs could give other bytes.
"""

from __future__ import annotations

import functools
from importlib import metadata

from ..errors import UsageError
from ..format import CodecVersions

__all__ = ["codec_versions", "check_same_codecs"]


def _pil_version(kind: str, name: str) -> str | None:
    from PIL import features

    try:
        v = {"codec": features.version_codec, "module": features.version_module,
             "feature": features.version_feature}[kind](name)
    except (ValueError, KeyError):  # unknown to this Pillow
        return None
    return str(v) if v else None


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def codec_versions() -> CodecVersions:
    """This process's versions (computed once: they cannot change while it runs).

    Pillow reports the libraries it was built with (``PIL.features``): libjpeg-turbo (or
    the libjpeg API version when it is another libjpeg), zlib and zlib-ng, OpenJPEG,
    libtiff and libwebp. Pillow does not use libpng (its PNG codec is its own, on zlib),
    so ``libpng`` is recorded only when a Pillow build reports it. libdeflate comes from
    :func:`shardgen.imaging.image.encoder_info`; pydicom only when it is installed.
    """
    import numpy
    import PIL

    from .image import encoder_info

    enc = encoder_info()
    turbo = _pil_version("feature", "libjpeg_turbo")
    return CodecVersions(
        pillow=PIL.__version__,
        numpy=numpy.__version__,
        libdeflate=str(enc["version"]),
        deflate=str(enc["binding"]).split(" ", 1)[-1],
        libjpeg_turbo=turbo or (f"libjpeg {v}" if (v := _pil_version("codec", "jpg")) else None),
        zlib=_pil_version("codec", "zlib"),
        zlib_ng=_pil_version("feature", "zlib_ng"),
        libpng=None,
        openjpeg=_pil_version("codec", "jpg_2000"),
        libtiff=_pil_version("codec", "libtiff"),
        libwebp=_pil_version("module", "webp"),
        pydicom=_dist_version("pydicom"),
    )


def check_same_codecs(expected: CodecVersions | None, got: CodecVersions | None, what: str,
                      overwrite_hint: bool = False) -> None:
    """Refuse ``got`` when a library's version differs from ``expected``.

    Args:
        expected: the versions the bytes must be made with (the interrupted build's, or the client's).
        got: the versions at hand (this process's, or a worker's).
        what: the message, with ``{lib}``, ``{expected}`` and ``{got}`` filled in.
        overwrite_hint: end with "use --overwrite to rebuild with the current ones".

    Raises:
        UsageError: one line naming the library and both versions.
    """
    if expected is None or got is None:
        return
    diff = expected.first_difference(got)
    if diff is None:
        return
    lib, a, b = diff
    hint = "; use --overwrite to rebuild with this machine's libraries" if overwrite_hint else ""
    raise UsageError(what.format(lib=lib, expected=a or "none", got=b or "none") + hint)
