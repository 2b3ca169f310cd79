"""Folders only this user can change: the decoded cache's place (``make_loader(decoded_cache=...)``).

A folder is *private* when it is a real folder (not a symbolic link), owned by the
effective user, and not writable by group or others. Anything in such a folder was put
there by this user's own processes, so its entries can be trusted as far as their own
checksums go. ``/dev/shm`` and ``/tmp`` are writable by every local user: a folder with a
predictable name there (``/dev/shm/shardgen-<user>``) may have been made by someone
else, with their symlinks and files in it, so it is checked on every start
(:func:`private_problem`), and opened with ``O_NOFOLLOW | O_DIRECTORY`` and checked
again on the open descriptor (:func:`open_private_dir`), so the folder checked is the
folder used.
"""

from __future__ import annotations

import errno
import os
import pwd
import stat
import tempfile

__all__ = ["NotPrivate", "private_problem", "open_private_dir", "make_private_dir", "private_fallback"]


class NotPrivate(OSError):
    """A folder that another user could change (the message says why)."""


def _owner(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _stat_problem(st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != os.geteuid():
        return f"belongs to {_owner(st.st_uid)}, not to this user ({_owner(os.geteuid())})"
    if st.st_mode & 0o022:
        return f"is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def open_private_dir(path: str) -> int:
    """Open folder ``path`` without following a symbolic link and prove it private.

    Returns:
        A descriptor of the folder (``O_RDONLY | O_DIRECTORY | O_CLOEXEC``) for the
        ``dir_fd=`` calls that create and open the files in it; the caller closes it.

    Raises:
        NotPrivate: ``path`` is a symbolic link, not a folder, another user's, or
            writable by group or others.
        OSError: it cannot be opened (missing, no permission).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotPrivate(e.errno, _stat_problem(os.lstat(path)) or "is not a folder", path) from None
        raise
    problem = _stat_problem(os.fstat(fd))
    if problem is not None:
        os.close(fd)
        raise NotPrivate(errno.EPERM, problem, path)
    return fd


def private_problem(path: str) -> str | None:
    """Why folder ``path`` is not private (e.g. ``"belongs to user nobody (uid 65534)"``),
    ``"does not exist"``, or None when it is private."""
    try:
        os.close(open_private_dir(path))
    except NotPrivate as e:
        return e.strerror
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:
        return f"cannot be opened: {e.strerror or e}"
    return None


def make_private_dir(path: str) -> str | None:
    """Create folder ``path`` (mode 0700; its parents as ``os.makedirs`` does) unless it
    exists; returns :func:`private_problem` of what is there.

    Raises:
        OSError: it cannot be created (a read-only or foreign parent).
    """
    parent = os.path.dirname(path)
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    return private_problem(path)


def private_fallback(path: str) -> str:
    """A private folder next to ``path`` for when ``path`` is not private: the first (by
    name) existing private ``<path>-<random>`` of this user, else a new one (``mkdtemp``,
    mode 0700). Processes starting together (the ranks of a node) end up in the same one:
    each one that makes a folder keeps it only if no private sibling sorts before it.

    Raises:
        OSError: the parent folder cannot be listed or written.
    """
    parent, base = os.path.split(path)

    def ours() -> list[str]:
        names = sorted(n for n in os.listdir(parent) if n.startswith(base + "-"))
        return [n for n in names if private_problem(os.path.join(parent, n)) is None
                and os.access(os.path.join(parent, n), os.W_OK | os.X_OK)]

    have = ours()
    if have:
        return os.path.join(parent, have[0])
    made = tempfile.mkdtemp(prefix=base + "-", dir=parent)
    have = ours()
    if have and have[0] != os.path.basename(made):
        try:
            os.rmdir(made)
        except OSError:
            pass
        return os.path.join(parent, have[0])
    return made
