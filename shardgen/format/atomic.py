"""Atomic writes: a temporary file in the target's folder, flushed, fsync'ed and renamed.

Nothing under a final name is ever partial; an exception leaves no temporary behind.
This is the one implementation every writer of shardgen uses (shards, JSON files, the
StyleGAN zip, the loaders' shard cache).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, BinaryIO, Iterator

__all__ = ["TMP_PREFIX", "atomic_write", "atomic_write_bytes", "atomic_write_json", "dump_json"]

#: Prefix of temporary files; a build removes leftovers with this prefix when it resumes.
TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_write(path: str, fsync: bool = True, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` when the block ends without an exception.

    Args:
        path: the final path (its folder must exist).
        fsync: flush the data to disk before the rename (default true; scratch files that
            are checksummed anyway may skip it).
        mode: permission bits of the final file (default 0644).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, suffix="-" + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes, fsync: bool = True) -> None:
    """Atomically write ``data`` to ``path`` (see :func:`atomic_write`)."""
    with atomic_write(path, fsync=fsync) as f:
        f.write(data)


def dump_json(obj: Any, *, indent: int | None = 1) -> bytes:
    """The format's JSON bytes: UTF-8, keys in the order written, a final newline."""
    return (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: str, obj: Any) -> None:
    """Atomically write ``obj`` as :func:`dump_json` bytes."""
    atomic_write_bytes(path, dump_json(obj))
