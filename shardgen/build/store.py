"""OUT of a build, a local folder or a URL: one interface for the run and its two tasks.

The run (:mod:`shardgen.build.run`) and the tasks (:class:`~shardgen.build.convert.ChunkTask`,
:class:`~shardgen.build.assemble.ShardTask`) never ask where OUT is; they call an OUT store:

* :class:`LocalOut`: a folder on this machine. OUT is held by a ``flock``
  (:class:`~shardgen.build.lock.LocalLock`); files are written under a temporary name and renamed
  (:func:`~shardgen.format.atomic_write`); shards are written straight into place and their PNGs
  read from the chunks with ``seek``.
* :class:`FsOut`: an fsspec URL (``s3://bucket/out``). OUT is held by a lease
  (:class:`~shardgen.build.lease.Lease`); each object goes up with one PUT
  (:mod:`shardgen.storage.io`); a shard is written to a local temporary file and uploaded whole;
  its PNGs come from ranged reads of the chunks, neighbouring ranges merged; the metadata files
  are written to a local staging folder and published with ``manifest.json`` last
  (:class:`~shardgen.build.remote_out.RemoteOut`).

Scratch paths are OUT's own (``OUT/.shardgen-work/...``: a path or a URL); stores are picklable.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, Sequence

from fsspec.utils import merge_offset_ranges

from ..errors import UsageError
from ..format import MANIFEST, WORK_DIR, ShardWriter, atomic_write_bytes, atomic_write_json, file_xxh64
from ..format import stream_xxh64
from ..storage import is_url
from ..storage.get import read_ranges
from ..storage.io import put_file_atomic, put_scratch, put_scratch_pair, read_or_none
from ..storage.location import Location
from ..storage.transport import storage_errors
from .lock import LocalLock
from .outdir import clean_temporaries, clean_temporaries_quietly, prepare_out
from .remote_out import RemoteOut

__all__ = ["OutStore", "LocalOut", "FsOut", "out_store"]

#: Ranges of one chunk closer than this are read with one request (bytes).
MAX_GAP = 256 << 10


class OutStore(ABC):
    """What a build does with OUT (the interface; :class:`LocalOut` and :class:`FsOut` implement it).

    Attributes:
        url: OUT as given (a path or a URL).
        remote: OUT is a URL.
    """

    url: str
    remote: bool

    @abstractmethod
    def join(self, rel: str) -> str:
        """The path (or URL) of ``rel`` (``/``-separated) under OUT."""
        ...

    @property
    def work(self) -> str:
        """The scratch folder (``OUT/.shardgen-work``)."""
        return self.join(WORK_DIR)

    @property
    def work_location(self) -> Location | None:
        """The scratch folder as a :class:`~shardgen.storage.location.Location` (None: a local folder)."""
        return None

    @abstractmethod
    def hold(self):
        """Take OUT for this build: an object with ``check()``, ``note`` and ``release()``."""
        ...

    @abstractmethod
    def start(self, fingerprint: dict, overwrite: bool) -> str:
        """Check OUT, clean temporaries, record the config, drop an old manifest; returns :attr:`work`.

        Raises:
            UsageError: OUT holds foreign files, a build of another config (without ``overwrite``),
                or cannot be written.
        """
        ...

    @abstractmethod
    def names(self, rel: str) -> set[str]:
        """The names in the folder ``rel`` (empty when it does not exist)."""
        ...

    @abstractmethod
    def read_or_none(self, path: str) -> bytes | None:
        """The whole file at ``path``, or None when it is missing or unreadable."""
        ...

    @abstractmethod
    def digest(self, path: str) -> tuple[str, int] | None:
        """``(xxh64, size)`` of the file at ``path``, read as a stream (None: missing, unreadable)."""
        ...

    @abstractmethod
    def put(self, path: str, data: bytes) -> None:
        """Write a scratch file atomically (not fsync'ed: scratch files are checked on reuse)."""
        ...

    @abstractmethod
    def put_pair(self, first: tuple[str, bytes], second: tuple[str, bytes]) -> None:
        """Write two scratch files, ``(path, data)`` each: ``first``, then ``second`` (or both at once)."""
        ...

    @abstractmethod
    def pngs(self, samples: Sequence[Any]) -> Iterator[bytes | BaseException]:
        """Each sample's ``chunk_bin[offset:offset + length]``, in order (an error where a read failed)."""
        ...

    @abstractmethod
    def shard(self, relpath: str) -> contextlib.AbstractContextManager[ShardWriter]:
        """A :class:`~shardgen.format.ShardWriter` whose shard is in place, whole, when the block ends."""
        ...

    def make_split_dirs(self, splits: Sequence[str]) -> None:
        """Create the split folders (where a store has folders)."""

    @abstractmethod
    def clean_temporaries(self, quietly: bool = False) -> None:
        """Remove the temporaries of interrupted writes (``quietly``: ignore errors, e.g. a full disk)."""
        ...

    @abstractmethod
    def finish(self, write: Callable[[str], Any], split_names: Sequence[str], planned: set[str],
               before_manifest: Callable[[], None]) -> Any:
        """Write the metadata files with ``write(folder)`` (``manifest.json`` last; a local folder: OUT
        itself) and publish them; ``before_manifest()`` runs before anything becomes visible that
        ``manifest.json`` would name. Returns what ``write`` returned."""
        ...


class LocalOut(OutStore):
    """OUT as a folder on this machine.

    Args:
        root: the folder.
    """

    remote = False

    def __init__(self, root: str) -> None:
        self.url = self.root = str(root)

    def join(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def hold(self) -> LocalLock:
        return LocalLock(self.root).acquire()

    def start(self, fingerprint: dict, overwrite: bool) -> str:
        out, work = self.root, self.work
        try:
            prepare_out(out, fingerprint, overwrite)
            os.makedirs(os.path.join(work, "chunks"), exist_ok=True)
            os.makedirs(os.path.join(work, "shards"), exist_ok=True)
            clean_temporaries(out)
            atomic_write_json(os.path.join(work, "config.json"), fingerprint)
            if os.path.exists(os.path.join(out, MANIFEST)):
                # Readers must never see a manifest listing shards that are being rewritten.
                os.unlink(os.path.join(out, MANIFEST))
        except OSError as e:
            raise UsageError(f"OUT {out}: cannot write ({e.strerror or e})") from None
        return work

    def names(self, rel: str) -> set[str]:
        try:
            return set(os.listdir(self.join(rel)))
        except OSError:
            return set()

    def read_or_none(self, path: str) -> bytes | None:
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return None

    def digest(self, path: str) -> tuple[str, int] | None:
        try:
            return file_xxh64(path)
        except OSError:
            return None

    def put(self, path: str, data: bytes) -> None:
        atomic_write_bytes(path, data, fsync=False)

    def put_pair(self, first: tuple[str, bytes], second: tuple[str, bytes]) -> None:
        self.put(*first)
        self.put(*second)

    def pngs(self, samples: Sequence[Any]) -> Iterator[bytes | BaseException]:
        handles: dict[str, Any] = {}
        try:
            for s in samples:
                f = handles.get(s.chunk_bin) or handles.setdefault(s.chunk_bin, open(s.chunk_bin, "rb"))
                f.seek(s.offset)
                yield f.read(s.length)
        finally:
            for f in handles.values():
                f.close()

    def shard(self, relpath: str) -> ShardWriter:
        return ShardWriter(self.join(relpath))

    def make_split_dirs(self, splits: Sequence[str]) -> None:
        for sp in splits:
            os.makedirs(os.path.join(self.root, sp), exist_ok=True)

    def clean_temporaries(self, quietly: bool = False) -> None:
        (clean_temporaries_quietly if quietly else clean_temporaries)(self.root)

    def finish(self, write: Callable[[str], Any], split_names: Sequence[str], planned: set[str],
               before_manifest: Callable[[], None]) -> Any:
        before_manifest()  # a local lock cannot lapse; checked once, before any metadata file
        return write(self.root)


class FsOut(OutStore):
    """OUT as an fsspec location (``s3://bucket/out``).

    Args:
        loc: OUT.
    """

    remote = True

    def __init__(self, loc: Location) -> None:
        self.loc, self.url = loc, loc.url
        self._state: RemoteOut | None = None

    def __getstate__(self) -> dict:
        return {"loc": self.loc, "url": self.url, "_state": None}  # the listing state stays here

    @property
    def state(self) -> RemoteOut:
        """OUT's state before the build and the publication of its metadata files."""
        if self._state is None:
            self._state = RemoteOut(self.loc)
        return self._state

    def join(self, rel: str) -> str:
        return self.loc.join(rel)

    @property
    def work_location(self) -> Location:
        return Location(self.work, self.loc.options)

    def hold(self):
        from .lease import Lease

        with storage_errors(self.url, "taking the lease on OUT", self.loc.options):
            return Lease(self.loc).acquire()

    def start(self, fingerprint: dict, overwrite: bool) -> str:
        with storage_errors(self.url, "preparing OUT", self.loc.options):
            return self.state.prepare(fingerprint, overwrite)

    def names(self, rel: str) -> set[str]:
        try:
            return {p.rsplit("/", 1)[-1] for p in self.loc.fs().ls(self.join(rel), detail=False)}
        except (FileNotFoundError, OSError):
            return set()

    def read_or_none(self, path: str) -> bytes | None:
        return read_or_none(self.loc.fs(), path)

    def digest(self, path: str) -> tuple[str, int] | None:
        try:
            with self.loc.fs().open(path, "rb", block_size=8 << 20) as f:
                return stream_xxh64(f)
        except (OSError, ValueError):
            return None

    def put(self, path: str, data: bytes) -> None:
        put_scratch(self.loc.fs(), path, data)

    def put_pair(self, first: tuple[str, bytes], second: tuple[str, bytes]) -> None:
        put_scratch_pair(self.loc.fs(), first, second)

    def pngs(self, samples: Sequence[Any]) -> Iterator[bytes | BaseException]:
        """Ranged reads of the chunks, neighbouring ranges merged (one request each)."""
        paths = [s.chunk_bin for s in samples]
        starts = [s.offset for s in samples]
        ends = [s.offset + s.length for s in samples]
        mpaths, mstarts, mends = merge_offset_ranges(paths, starts, ends, max_gap=MAX_GAP, max_block=32 << 20)
        blocks = read_ranges(self.loc.fs(), mpaths, mstarts, mends)
        by_path: dict[str, list[tuple[int, int, bytes | BaseException]]] = {}
        for p, a, b, data in zip(mpaths, mstarts, mends, blocks):
            by_path.setdefault(p, []).append((a, b, data))
        for p, a, b in zip(paths, starts, ends):
            blk = next(((s0, data) for s0, e0, data in by_path[p] if s0 <= a and b <= e0), None)
            if blk is None or isinstance(blk[1], BaseException):
                yield blk[1] if blk else KeyError(p)
            else:
                yield blk[1][a - blk[0]:b - blk[0]]

    @contextlib.contextmanager
    def shard(self, relpath: str) -> Iterator[ShardWriter]:
        tmpdir = tempfile.mkdtemp(prefix="shardgen-shard-")
        try:
            local = os.path.join(tmpdir, relpath.rsplit("/", 1)[-1])
            with ShardWriter(local) as w:
                yield w
            put_file_atomic(self.loc.fs(), local, self.join(relpath))
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    def clean_temporaries(self, quietly: bool = False) -> None:
        with contextlib.suppress(Exception) if quietly else contextlib.nullcontext():
            self.state.clean_temporaries()

    def finish(self, write: Callable[[str], Any], split_names: Sequence[str], planned: set[str],
               before_manifest: Callable[[], None]) -> Any:
        before_manifest()
        staging = tempfile.mkdtemp(prefix="shardgen-meta-")
        try:
            result = write(staging)
            self.state.publish(staging, planned, list(split_names), before_manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return result


def out_store(out: str, loc: Location | None) -> OutStore:
    """The store of OUT: :class:`FsOut` when OUT is given as a URL (``loc``), else :class:`LocalOut`."""
    return FsOut(loc) if loc is not None and is_url(loc.url) else LocalOut(out)
