"""Local outputs written atomically by the exports: a zip archive or a folder, and the
samples they are filled from.

Each output is a context manager: what was written becomes ``dest`` only through
:meth:`commit`; leaving the block without it (an error, Ctrl-C) removes everything
written. Used by ``shardgen stylegan`` and ``shardgen export``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from typing import Any, Iterator

from .errors import ShardgenError
from .format import CLS_EXT, LABELS_EXT, TMP_PREFIX, ShardReadError, TarReader, atomic_write, decode_cls, decode_multihot

__all__ = ["ZIP_DATE", "ZipOut", "FolderOut", "ReplacingFolderOut", "samples_of", "label_of", "labels_of"]

#: Timestamp of every zip member (the zip epoch): fixed so archives are byte-identical.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class _Out:
    """Context-manager protocol shared by the outputs: abort unless committed."""

    _done = False

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self._done = True
            self.abort()

    def abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class ZipOut(_Out):
    """A stored (uncompressed) zip with fixed member metadata, renamed into place on commit."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self._ctx = atomic_write(dest)
        self.zf = zipfile.ZipFile(self._ctx.__enter__(), "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def write(self, name: str, data: bytes) -> None:
        zi = zipfile.ZipInfo(name, date_time=ZIP_DATE)
        zi.compress_type = zipfile.ZIP_STORED
        zi.external_attr = 0o644 << 16
        self.zf.writestr(zi, data)

    def commit(self) -> int:
        """Finish the archive, rename it to ``dest``; returns its size in bytes."""
        self.zf.close()
        self._done = True
        self._ctx.__exit__(None, None, None)
        return os.path.getsize(self.dest)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.zf.close()
        self._ctx.__exit__(ShardgenError, ShardgenError("aborted"), None)


class FolderOut(_Out):
    """A folder filled under a temporary name beside ``dest`` (which must be absent or empty)."""

    def __init__(self, dest: str) -> None:
        self.dest = dest.rstrip("/\\") or dest
        parent = os.path.dirname(os.path.abspath(self.dest))
        self.tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, suffix="-" + os.path.basename(self.dest), dir=parent)
        self.bytes = 0

    def write(self, name: str, data: bytes) -> None:
        path = os.path.join(self.tmp, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
        self.bytes += len(data)

    def commit(self) -> int:
        """Rename the folder to ``dest``; returns the bytes written."""
        os.chmod(self.tmp, 0o755)
        if os.path.isdir(self.dest):
            os.rmdir(self.dest)  # checked empty before we started
        os.replace(self.tmp, self.dest)
        self._done = True
        return self.bytes

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


class ReplacingFolderOut(FolderOut):
    """:class:`FolderOut` that may also replace a non-empty folder at the end (``--overwrite``)."""

    def commit(self) -> int:
        if os.path.isdir(self.dest) and os.listdir(self.dest):
            parent = os.path.dirname(os.path.abspath(self.dest))
            old = tempfile.mkdtemp(prefix=TMP_PREFIX + "old-", suffix="-" + os.path.basename(self.dest), dir=parent)
            os.replace(self.dest, old)  # onto an empty folder: allowed, atomic
            try:
                n = super().commit()
            except BaseException:
                os.replace(old, self.dest)
                raise
            shutil.rmtree(old, ignore_errors=True)
            return n
        return super().commit()


def samples_of(build, splits: list[str]) -> Iterator[tuple[str, Any]]:
    """``(shard relpath, sample)`` of every sample of ``splits``, in shard order.

    Raises:
        ShardgenError: a shard does not read to its end (naming it).
    """
    for sp in splits:
        for entry in build.split(sp).shards:
            rel = entry.path
            try:
                with build.open_shard(rel) as f:
                    for smp in TarReader(f).samples():
                        yield rel, smp
            except ShardReadError as e:
                raise ShardgenError(f"{rel}: {e}") from None
            except OSError as e:
                raise ShardgenError(f"{rel}: read error: {e}") from None


def label_of(rel: str, smp: Any, n_classes: int) -> int:
    """The sample's class index from its ``.cls`` member, checked against the class count.

    Raises:
        ShardgenError: missing, not a number, or out of range (naming shard and key).
    """
    if CLS_EXT not in smp.parts:
        raise ShardgenError(f"{rel}: {smp.key}: sample lacks .cls; run shardgen verify")
    try:
        label = decode_cls(smp.parts[CLS_EXT])
    except (ValueError, UnicodeDecodeError):
        raise ShardgenError(f"{rel}: {smp.key}: .cls is not a class index; run shardgen verify") from None
    if not 0 <= label < n_classes:
        raise ShardgenError(f"{rel}: {smp.key}: label {label} out of range (0..{n_classes - 1})")
    return label


def labels_of(rel: str, smp: Any, n_classes: int) -> tuple[int, ...]:
    """A multi-label sample's class indices from its ``.labels.npy`` member.

    Raises:
        ShardgenError: missing, or not a 0/1 float32 vector of ``n_classes`` values.
    """
    if LABELS_EXT not in smp.parts:
        raise ShardgenError(f"{rel}: {smp.key}: sample lacks .{LABELS_EXT}; run shardgen verify")
    try:
        return decode_multihot(smp.parts[LABELS_EXT], n_classes)
    except ValueError as e:
        raise ShardgenError(f"{rel}: {smp.key}: .{LABELS_EXT}: {e}; run shardgen verify") from None
