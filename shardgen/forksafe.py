"""Keep forked DataLoader workers from closing their parent's network connections.

fsspec's async filesystems (``http(s)://`` through aiohttp, ``s3://`` through s3fs)
close their sessions from a ``weakref.finalize`` callback (``close_session``). A
forked worker inherits those objects *and* the parent's epoll instance; when the
worker drops the inherited filesystem (fsspec clears its instance cache in a new
process), the callback runs in the worker, closes the connector there and so
unregisters the parent's pooled sockets from the epoll instance the two processes
share. The parent's next request on such a connection then never sees its answer
and hangs until aiohttp's 5-minute timeout (seen here: a second ``make_loader`` on
an ``http://`` build while the first one's workers were alive).

After a fork, in the child, :func:`_adopt_inherited_sessions` detaches those
callbacks and keeps the inherited objects referenced for the child's lifetime, so
nothing in the child ever closes them. The child makes its own filesystem. Forked
workers leave through ``os._exit`` (no finalisation), so nothing runs at exit either.
"""

from __future__ import annotations

import os
import weakref

__all__ = ["install"]

_ORPHANS: list = []
_installed = False


def _adopt_inherited_sessions() -> None:
    try:
        registry = weakref.finalize._registry  # type: ignore[attr-defined]
        for f, info in list(registry.items()):
            func = getattr(info, "func", None)
            if getattr(func, "__name__", "") == "close_session":
                detached = f.detach()
                if detached is not None:
                    _ORPHANS.append(detached)
        import fsspec.spec

        for cls in _subclasses(fsspec.spec.AbstractFileSystem):
            cache = cls.__dict__.get("_cache")
            if cache:
                _ORPHANS.extend(cache.values())
    except Exception:  # never let a fork fail because of this
        pass


def _subclasses(cls) -> list:
    out, todo = [], [cls]
    while todo:
        c = todo.pop()
        out.append(c)
        todo.extend(c.__subclasses__())
    return out


def install() -> None:
    """Register the after-fork hook once per process (idempotent)."""
    global _installed
    if not _installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_adopt_inherited_sessions)
        _installed = True
