"""Local outputs written atomically by the exports: a zip archive or a folder, and the
verified samples they are filled from.

Each output is a context manager: what was written becomes ``dest`` only through
:meth:`commit`; leaving the block without it (an error, Ctrl-C) removes everything
written. Used by ``shardgen stylegan``, ``shardgen export`` and ``shardgen preview``.

What every output guarantees (``docs/cli.md``, "Outputs of the exports"):

- **inside DEST**: a name is written only if it is a relative path of plain components
  (no ``..``, ``.``, empty part, ``\\``, NUL or control character, each at most 255 bytes),
  and the folder it goes into, resolved (:func:`os.path.realpath`), is exactly where it
  should be inside the temporary folder; files are opened ``O_CREAT | O_EXCL | O_NOFOLLOW``.
- **temporaries**: created beside DEST by :mod:`shardgen.format.atomic` (unpredictable
  names, exclusive creation, never a followed symlink); our own stale ones from a killed
  run are swept when the next output is opened in that folder (:func:`sweep`).
- **errors**: a write that fails (a full disk, a read-only or unwritable folder) is one
  :class:`ShardgenError` naming DEST and the reason; nothing is left behind.

:func:`shard_samples` reads a shard checked against its manifest entry: every byte is hashed
(xxh64) and counted while it streams, no member may declare more than
``min(entry.bytes, member_limit(image.size))`` bytes, and the shard must end with exactly the
manifest's size and xxh64; the samples of a shard that does not match are yielded before
the error, so an output filled from them must not be committed (the outputs above never are).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import zipfile
from typing import Any, Iterator

from ..errors import AccessDenied, ShardgenError, TransportError
from ..format import CLS_EXT, LABELS_EXT, LabelError, ShardReadError, TarReader, read_target
from ..format.atomic import atomic_write, create_temp_dir, sweep_stale_temps
from ..format.checksum import HashingReader
from ..format.validate import member_limit, shown
from ..redact import redact

__all__ = ["ZIP_DATE", "ZipOut", "FolderOut", "ReplacingFolderOut", "sweep", "has_entries", "checked_parts",
           "write_error", "shard_samples", "samples_of", "label_of", "labels_of"]

#: Timestamp of every zip member (the zip epoch): fixed so archives are byte-identical.
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_OLD = "old-"


def write_error(dest: str, e: OSError, flag: str = "--dest") -> ShardgenError:
    """The one-line error for a failed write to ``dest``: ``--dest DEST: cannot write: REASON``."""
    reason = e.strerror or str(e) or type(e).__name__
    return ShardgenError(f"{flag} {redact(dest)}: cannot write: {reason}")


def has_entries(folder: str, flag: str = "--dest") -> bool:
    """``folder`` is a folder holding something (False when it is absent or empty).

    Raises:
        ShardgenError: it cannot be listed (e.g. another user's folder), naming it and the reason.
    """
    if not os.path.isdir(folder):
        return False
    try:
        with os.scandir(folder) as it:
            return next(it, None) is not None
    except OSError as e:
        raise ShardgenError(f"{flag} {redact(folder)}: cannot list it: {e.strerror or e}") from None


#: What no component of an output name may hold: a backslash, NUL or another control character.
_BAD_PART = re.compile("[\x00-\x1f\x7f\\\\]")


def checked_parts(name: str) -> list[str]:
    """The components of output name ``name`` (``/``-separated, relative).

    Raises:
        ShardgenError: a component is empty, ``.`` or ``..``, holds ``\\``, NUL or a control
            character, or is longer than 255 bytes (the name would leave its folder).
    """
    parts = name.split("/")
    for p in parts:
        if p in ("", ".", "..") or _BAD_PART.search(p) or len(p.encode("utf-8", "surrogateescape")) > 255:
            raise ShardgenError(f"refusing to write {shown(name)}: not a plain relative path inside the output; "
                                "run shardgen verify")
    return parts


def sweep(folder: str) -> list[str]:
    """Remove our stale temporaries in ``folder`` (see :func:`shardgen.format.atomic.sweep_stale_temps`),
    except the previous contents of a folder whose replacement was cut short (``old-<name>`` while
    ``<name>`` is missing: kept, never lost). Returns the names removed."""
    def keep(final: str) -> bool:
        return final.startswith(_OLD) and not os.path.lexists(os.path.join(folder, final[len(_OLD):]))

    return sweep_stale_temps(folder, keep=keep)


class _Out:
    """Context-manager protocol shared by the outputs: abort unless committed."""

    _done = False
    dest = ""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self._done = True
            self.abort()

    def _error(self, e: OSError) -> ShardgenError:
        return write_error(self.dest, e)

    def abort(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class ZipOut(_Out):
    """A stored (uncompressed) zip with fixed member metadata, renamed into place on commit.

    Raises:
        ShardgenError: (from every method) the archive cannot be written, naming ``dest``.
    """

    def __init__(self, dest: str) -> None:
        self.dest = dest
        sweep(os.path.dirname(os.path.abspath(dest)))
        self._ctx = atomic_write(dest)
        try:
            self.zf = zipfile.ZipFile(self._ctx.__enter__(), "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        except OSError as e:
            raise self._error(e) from None

    def write(self, name: str, data: bytes) -> None:
        zi = zipfile.ZipInfo("/".join(checked_parts(name)), date_time=ZIP_DATE)
        zi.compress_type = zipfile.ZIP_STORED
        zi.external_attr = 0o644 << 16
        try:
            self.zf.writestr(zi, data)
        except OSError as e:
            raise self._error(e) from None

    def commit(self) -> int:
        """Finish the archive, rename it to ``dest``; returns its size in bytes."""
        try:
            self.zf.close()
        except OSError as e:
            raise self._error(e) from None  # __exit__ aborts
        self._done = True
        try:
            self._ctx.__exit__(None, None, None)  # fsync, rename; removes the temporary if that fails
        except OSError as e:
            raise self._error(e) from None
        return os.path.getsize(self.dest)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.zf.close()
        with contextlib.suppress(Exception):  # a full disk fails the last flush again: the file is removed anyway
            self._ctx.__exit__(ShardgenError, ShardgenError("aborted"), None)


class FolderOut(_Out):
    """A folder filled under a temporary name beside ``dest`` (which must be absent or empty).

    Raises:
        ShardgenError: (from every method) the folder cannot be written, naming ``dest``; a
            name that is not a plain relative path, or whose folder resolves elsewhere.
    """

    def __init__(self, dest: str) -> None:
        self.dest = dest.rstrip("/\\") or dest
        self.parent = os.path.dirname(os.path.abspath(self.dest))
        sweep(self.parent)
        try:
            self._fd, self.tmp = create_temp_dir(self.parent, os.path.basename(self.dest))
        except OSError as e:
            raise self._error(e) from None
        self._real = os.path.realpath(self.tmp)
        self._folders: set[tuple[str, ...]] = {()}
        self.bytes = 0

    def _folder(self, dirs: tuple[str, ...]) -> str:
        """The folder ``dirs`` inside the temporary one, made and proven to resolve there."""
        path = os.path.join(self.tmp, *dirs)
        if dirs not in self._folders:
            os.makedirs(path, exist_ok=True)
            if os.path.realpath(path) != os.path.join(self._real, *dirs):
                raise ShardgenError(f"refusing to write into {shown('/'.join(dirs))}: it resolves outside "
                                    f"{redact(self.dest)}")
            self._folders.add(dirs)
        return path

    def write(self, name: str, data: bytes) -> None:
        parts = checked_parts(name)
        try:
            path = os.path.join(self._folder(tuple(parts[:-1])), parts[-1])
            try:
                fd = os.open(path, _NEW_FILE, 0o666)
            except FileExistsError:
                raise ShardgenError(f"{shown(name)} written twice; run shardgen verify") from None
            with open(fd, "wb", closefd=True) as f:
                f.write(data)
        except OSError as e:
            raise self._error(e) from None
        self.bytes += len(data)

    def _close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def commit(self) -> int:
        """Rename the folder to ``dest``; returns the bytes written."""
        try:
            os.chmod(self.tmp, 0o755)
            if os.path.isdir(self.dest) and not os.path.islink(self.dest):
                os.rmdir(self.dest)  # checked empty before we started
            os.replace(self.tmp, self.dest)
        except OSError as e:
            raise self._error(e) from None  # __exit__ aborts
        self._done = True
        self._close()
        return self.bytes

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._close()


class ReplacingFolderOut(FolderOut):
    """:class:`FolderOut` that may also replace a non-empty folder at the end (``--overwrite``)."""

    def commit(self) -> int:
        if os.path.islink(self.dest) or not has_entries(self.dest):
            return super().commit()
        try:
            fd, old = create_temp_dir(self.parent, _OLD + os.path.basename(self.dest))
            os.close(fd)
            os.replace(self.dest, old)  # onto an empty folder: allowed, atomic
        except OSError as e:
            raise self._error(e) from None
        try:
            n = super().commit()
        except BaseException:
            os.replace(old, self.dest)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return n


class _Bounded:
    """``f`` read as a shard of ``size`` bytes: any error of the transport becomes a
    :class:`ShardReadError`, and a byte past ``size`` is one."""

    def __init__(self, f, size: int) -> None:
        self.f, self.size, self.n = f, size, 0

    def read(self, n: int = -1) -> bytes:
        room = self.size + 1 - self.n
        n = room if n is None or n < 0 or n > room else n
        try:
            data = self.f.read(n)
        except (TransportError, AccessDenied):  # already one line naming the shard's URL (shardgen.storage.transport)
            raise
        except Exception as e:  # noqa: BLE001 - transports raise many types (aiohttp, botocore, OSError)
            raise ShardReadError(f"read error at byte {self.n:,}: {redact(str(e)) or type(e).__name__}") from None
        self.n += len(data)
        if self.n > self.size:
            raise ShardReadError(f"longer than the {self.size:,} bytes manifest.json gives; the shard changed "
                                 "or is not this build's: run shardgen verify")
        return data


def _open_shard(build, rel: str):
    try:
        return build.open_shard(rel)
    except (ShardReadError, TransportError, AccessDenied):
        raise
    except Exception as e:  # noqa: BLE001 - transports raise many types
        raise ShardReadError(f"cannot open: {redact(str(e)) or type(e).__name__}") from None


def _check_whole(hr: HashingReader, entry) -> None:
    hr.drain()
    if hr.n != entry.bytes or hr.hexdigest() != entry.xxh64:
        raise ShardReadError(f"does not match manifest.json: {hr.n:,} bytes with xxh64 {hr.hexdigest()}, "
                             f"manifest.json gives {entry.bytes:,} bytes with xxh64 {entry.xxh64}; the shard "
                             "changed or is damaged: run shardgen verify")


def shard_samples(build, entry, want: tuple[str, ...] | None = None) -> Iterator[Any]:
    """The samples of shard ``entry`` (a manifest ``ShardEntry`` of ``build``), checked while read.

    Every byte is hashed and counted (:class:`~shardgen.format.checksum.HashingReader`); no
    member may declare more than ``min(entry.bytes, member_limit(image.size))`` bytes; member
    names follow the key rule (strict :class:`TarReader`). After the last sample the rest is
    read and the size and xxh64 must be the manifest's.

    Args:
        build: an opened :class:`shardgen.storage.Build`.
        entry: one of its shard entries.
        want: member extensions to read (None: all).

    Raises:
        ShardgenError: the shard is missing, unreadable, malformed or does not match the
            manifest, naming it (redacted URL or path). Samples already yielded came from it:
            whatever was made of them must be thrown away.
    """
    limit = min(entry.bytes, member_limit(build.manifest.image.size))
    try:
        f = _open_shard(build, entry.path)
        with f:
            hr = HashingReader(_Bounded(f, entry.bytes))
            yield from TarReader(hr, want=want, limit=limit).samples()
            _check_whole(hr, entry)
    except ShardReadError as e:
        raise ShardgenError(f"{redact(build.url(entry.path))}: {e}") from None
    except OSError as e:  # closing the file
        raise ShardgenError(f"{redact(build.url(entry.path))}: read error: {redact(str(e))}") from None


def samples_of(build, splits: list[str]) -> Iterator[tuple[str, Any]]:
    """``(shard relpath, sample)`` of every sample of ``splits``, in shard order, each shard
    checked as :func:`shard_samples` checks it.

    Raises:
        ShardgenError: a shard does not read to its end or does not match the manifest (naming it).
    """
    for sp in splits:
        for entry in build.split(sp).shards:
            for smp in shard_samples(build, entry):
                yield entry.path, smp


def label_of(rel: str, smp: Any, n_classes: int) -> int:
    """The sample's class index from its ``.cls`` member, checked against the class count.

    Raises:
        ShardgenError: missing, not a number, or out of range (naming shard and key).
    """
    return _target(rel, smp, n_classes, False)


def labels_of(rel: str, smp: Any, n_classes: int) -> tuple[int, ...]:
    """A multi-label sample's class indices from its ``.labels.npy`` member.

    Raises:
        ShardgenError: missing, or not a 0/1 float32 vector of ``n_classes`` values.
    """
    return _target(rel, smp, n_classes, True)


def _target(rel: str, smp: Any, n_classes: int, multilabel: bool) -> Any:
    try:
        return read_target(smp.parts.get(LABELS_EXT if multilabel else CLS_EXT), n_classes, multilabel)
    except LabelError as e:
        raise ShardgenError(f"{rel}: {smp.key}: {e}; run shardgen verify") from None
