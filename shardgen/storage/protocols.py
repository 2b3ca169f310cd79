"""What each storage protocol can do: the one table the build, the loaders and upload consult.

A filesystem is asked through :func:`capabilities` (never by comparing protocol names where the
answer is needed), so adding a protocol is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Capabilities", "S3_PROTOCOLS", "HTTP_PROTOCOLS", "LOCAL_PROTOCOLS", "protocols_of", "capabilities"]

#: fsspec protocols that the S3 endpoint settings apply to.
S3_PROTOCOLS = ("s3", "s3a")
#: fsspec protocols served by aiohttp.
HTTP_PROTOCOLS = ("http", "https")
#: fsspec protocols of this machine's own file system.
LOCAL_PROTOCOLS = ("file", "local")


@dataclass(frozen=True)
class Capabilities:
    """What a storage protocol can do.

    Attributes:
        folders: it has real folders (a parent must be made before a file is written into it);
            an object store has flat keys.
        atomic_put: one PUT makes an object visible whole or not at all (a multipart upload
            only once complete), so no temporary name and rename is needed.
        local: this machine's own file system.
    """

    folders: bool = True
    atomic_put: bool = False
    local: bool = False


_OBJECT_STORE = Capabilities(folders=False, atomic_put=True)
#: One row per protocol; any other (``memory``, ``http``, ``sftp``, ...) has :class:`Capabilities`' defaults.
_TABLE: dict[str, Capabilities] = {
    **{p: _OBJECT_STORE for p in (*S3_PROTOCOLS, "gs", "gcs", "abfs", "abfss", "az", "oss", "r2")},
    # Azure Data Lake Gen1 is a file system with folders, and a write is a create and appends
    "adl": Capabilities(folders=True, atomic_put=False),
    **{p: Capabilities(local=True) for p in LOCAL_PROTOCOLS},
}


def protocols_of(fs: Any) -> frozenset[str]:
    """The protocol names an fsspec filesystem answers to."""
    p = fs.protocol
    return frozenset(p if isinstance(p, (tuple, list)) else (p,))


def capabilities(fs: Any) -> Capabilities:
    """What ``fs`` (an fsspec filesystem) can do, from the first of its protocols in the table."""
    return next((_TABLE[p] for p in sorted(protocols_of(fs)) if p in _TABLE), Capabilities())
