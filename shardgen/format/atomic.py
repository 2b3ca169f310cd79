"""Atomic writes: a temporary file in the target's folder, flushed, fsync'ed and renamed.

Nothing under a final name is ever partial; an exception leaves no temporary behind.
This is the one implementation every writer of shardgen uses (shards, JSON files, the
StyleGAN zip, the loaders' shard cache).

Temporary names are ``.tmp-<pid>.<host>.<random>-<final name>``: the creating process's
id, 8 hex digits of a hash of the host name, 12 random hex digits (48 bits, from
:mod:`secrets`), then the final name (cut to 120 bytes). Files are created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (mode 0600 until the rename) and folders with an
exclusive ``mkdir`` (mode 0700), so a name planted by someone else (a symlink, a file) is
never opened or followed: the next random name is tried instead. While it is being
written, each temporary holds an exclusive ``flock``.

:func:`sweep_stale_temps` removes a folder's leftovers of killed runs: only names of this
form, created on this host by a process that is gone, owned by the effective user, regular
files or real folders (never a symlink), and not locked by anyone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
from typing import Any, BinaryIO, Callable, Iterator

__all__ = ["TMP_PREFIX", "atomic_write", "atomic_write_bytes", "atomic_write_json", "dump_json", "temp_name",
           "create_temp_file", "create_temp_dir", "sweep_stale_temps"]

#: Prefix of temporary files; a build removes leftovers with this prefix when it resumes.
TMP_PREFIX = ".tmp-"
#: A temporary name this module makes: pid, host tag, random part, then the final name.
_OURS_RE = re.compile(r"^\.tmp-([0-9]{1,10})\.([0-9a-f]{8})\.([0-9a-f]{12})-(.*)$", re.S)
#: How many random names :func:`create_temp_file` / :func:`create_temp_dir` try.
_TRIES = 100
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@functools.lru_cache(maxsize=1)
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:8]


def _token() -> str:
    return secrets.token_hex(6)


def temp_name(final: str) -> str:
    """A fresh temporary name for ``final`` (a base name): ``.tmp-<pid>.<host>.<random>-<final>``."""
    tail = os.fsencode(final)[:120].decode("utf-8", "ignore")
    return f"{TMP_PREFIX}{os.getpid()}.{_host_tag()}.{_token()}-{tail}"


def _lock(fd: int) -> None:
    with contextlib.suppress(OSError):  # a file system without flock: the pid in the name still protects it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def create_temp_file(folder: str, final: str) -> tuple[int, str]:
    """Create a new temporary file in ``folder`` for the final name ``final``.

    Opened ``O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW``, mode 0600, and ``flock``'ed.

    Returns:
        (file descriptor, path).

    Raises:
        OSError: the folder cannot be written (``EACCES``, ``EROFS``, ``ENOSPC``...), or
            :data:`_TRIES` random names were all taken (``EEXIST``).
    """
    for _ in range(_TRIES):
        path = os.path.join(folder, temp_name(final))
        try:
            fd = os.open(path, _FILE_FLAGS, 0o600)
        except FileExistsError:
            continue
        _lock(fd)
        return fd, path
    raise FileExistsError(errno.EEXIST, "no free temporary name", folder)


def create_temp_dir(folder: str, final: str) -> tuple[int, str]:
    """Create a new temporary folder (mode 0700) in ``folder`` for the final name ``final``.

    Returns:
        (a descriptor of the folder, which holds its ``flock`` until closed; path).

    Raises:
        OSError: as :func:`create_temp_file`.
    """
    for _ in range(_TRIES):
        path = os.path.join(folder, temp_name(final))
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
        _lock(fd)
        return fd, path
    raise FileExistsError(errno.EEXIST, "no free temporary name", folder)


def _pid_gone(pid: int) -> bool:
    if pid <= 1 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


def _remove_if_unlocked(path: str, st: os.stat_result) -> bool:
    """Remove the file or folder ``path`` (lstat ``st``) unless someone holds its lock."""
    is_dir = stat.S_ISDIR(st.st_mode)
    flags = os.O_RDONLY | os.O_NOFOLLOW | (os.O_DIRECTORY if is_dir else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return False
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return False  # replaced since it was listed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a live writer (e.g. in another pid namespace)
        except OSError:
            pass
        if is_dir:
            shutil.rmtree(path)  # the fd-based rmtree: never follows a symlink inside
        else:
            os.unlink(path)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def sweep_stale_temps(folder: str, keep: Callable[[str], bool] | None = None) -> list[str]:
    """Remove the stale temporaries this module made in ``folder`` (not recursive).

    A name is removed only when all hold: it has this module's form (``.tmp-<pid>.<host>.<random>-``),
    ``<host>`` is this host, process ``<pid>`` is gone, the entry is owned by the effective
    user, is a regular file or a folder (not a symlink), nobody holds its ``flock``, and
    ``keep`` (given the final name the temporary was for) is not true. Errors are ignored:
    a sweep never fails the command that runs it.

    Returns:
        The names removed.
    """
    removed: list[str] = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _OURS_RE.match(name)
        if m is None or m.group(2) != _host_tag() or not _pid_gone(int(m.group(1))):
            continue
        if keep is not None and keep(m.group(4)):
            continue
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid != os.geteuid() or not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            continue
        if _remove_if_unlocked(path, st):
            removed.append(name)
    return removed


@contextlib.contextmanager
def atomic_write(path: str, fsync: bool = True, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Yield a binary file that becomes ``path`` when the block ends without an exception.

    The temporary (see the module's docstring) is created beside ``path`` with
    ``O_CREAT | O_EXCL | O_NOFOLLOW``.

    Args:
        path: the final path (its folder must exist).
        fsync: flush the data to disk before the rename (default true; scratch files that
            are checksummed anyway may skip it).
        mode: permission bits of the final file (default 0644).

    Raises:
        OSError: the temporary cannot be created or written, or the rename fails (the
            temporary is removed).
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = create_temp_file(folder, os.path.basename(path))
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
