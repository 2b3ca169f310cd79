"""Where the decoded cache lives and how big it may grow (``make_loader(decoded_cache=...,
decoded_cache_limit=...)``), planned in the main process: the place (``auto``: a
``$SHARDGEN_DECODED_CACHE`` folder, else ``/dev/shm`` when the split fits, else the user's
cache folder), the byte budget, eviction of other splits' entries, and the shards cached.
The entries themselves are :mod:`loaders.read.decoded.store`.

The place must be private (:mod:`loaders.read.private`: a folder of this user, not a
symbolic link, not writable by group or others), checked on every start. A default
place that is not (``/dev/shm/shardgen-<user>`` made by another local user, say) is
not used: the cache goes to a private ``<place>-<random>`` folder next to it instead,
with a warning; a folder given as ``decoded_cache=`` that is not private is a
:class:`~loaders.errors.UsageError`.
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import os
import stat
import time
from typing import Any

from ...errors import UsageError
from ..args import parse_size
from .entry import entry_bytes, label_bytes
from ..private import make_private_dir, private_fallback
from .store import DecodedConfig, entry_name

__all__ = ["plan_decoded", "plan_split", "check_decoded_args", "auto_places", "ENV_PLACE"]

log = logging.getLogger("loaders")

#: Environment variable naming the default place of ``decoded_cache="auto"`` (a folder, or
#: ``off``); an explicit ``decoded_cache`` argument wins.
ENV_PLACE = "SHARDGEN_DECODED_CACHE"


# -- planning (main process, at make_loader) -------------------------------------------------------------
def auto_places() -> list[str]:
    """The default places, in order of preference: ``$SHARDGEN_DECODED_CACHE`` alone when
    set, else ``/dev/shm/shardgen-<user>`` (memory) and ``$XDG_CACHE_HOME/shardgen/decoded``
    (``~/.cache/shardgen/decoded``)."""
    env = os.environ.get(ENV_PLACE)
    if env:
        return [] if env.strip().lower() in ("off", "0", "none", "false") else [env]
    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    out = []
    if os.path.isdir("/dev/shm"):
        out.append(f"/dev/shm/shardgen-{user}")
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    out.append(os.path.join(xdg, "shardgen", "decoded"))
    return out


def _entries(root: str) -> list[tuple[float, str, int, int]]:
    """``(last use, name, bytes, allocated bytes)`` of the entries in ``root``, oldest first."""
    out = []
    for n in os.listdir(root):
        if n.endswith(".dec") and not n.startswith("."):
            try:
                st = os.lstat(os.path.join(root, n))
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                out.append((st.st_mtime, n, st.st_size, st.st_blocks * 512))
    out.sort()
    return out


def _auto_limit(root: str) -> int:
    """Half of the file system holding ``root``, at most its free space plus what the
    cache already holds there, minus a reserve of 10% of the file system (at most 2 GiB)."""
    st = os.statvfs(root)
    total, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    held = sum(e[3] for e in _entries(root))
    return max(0, min(total // 2, free + held - min(total // 10, 2 << 30)))


def _prepare(place: str, explicit: bool) -> str | None:
    """The folder to use for ``place`` (created 0700 if missing), or None when it cannot
    be created or written. A ``place`` that is not private is refused when ``explicit``,
    else replaced by a private folder next to it (:func:`private_fallback`).

    Raises:
        UsageError: ``explicit`` and the folder is not private.
    """
    root = os.path.abspath(os.path.expanduser(str(place)))
    try:
        problem = make_private_dir(root)
    except OSError:
        return None
    if problem is not None and explicit:
        raise UsageError(f"decoded_cache {root}: {problem}, so another user could change what the loader "
                         f"reads; use a folder of your own that only you can write (mode 0700), or "
                         f"decoded_cache=None")
    if problem is not None:
        try:
            alt = private_fallback(root)
        except OSError as e:
            log.warning("decoded cache: %s %s, and no private folder can be made next to it (%s): not used",
                        root, problem, e.strerror or e)
            return None
        log.warning("decoded cache: %s %s, so another user could change it: using the private folder %s "
                    "instead", root, problem, alt)
        root = alt
    return root if os.access(root, os.W_OK | os.X_OK) else None


def _evict(root: str, keep: dict[str, int], limit: int) -> None:
    """Touch the entries in ``keep``; delete others, least recently used first, until the
    folder's entries plus the missing ones of ``keep`` fit in ``limit``."""
    fd = os.open(os.path.join(root, ".lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = _entries(root)
        have = {e[1] for e in entries}
        for n in set(keep) & have:
            try:
                os.utime(os.path.join(root, n), follow_symlinks=False)
            except FileNotFoundError:
                pass
        total = sum(e[2] for e in entries) + sum(b for n, b in keep.items() if n not in have)
        for _, n, size, _alloc in entries:
            if total <= limit:
                break
            if n not in keep:
                _unlink(os.path.join(root, n))
                log.info("decoded cache: evicted %s", n)
                total -= size
        now = time.time()
        for n in os.listdir(root):  # left by processes killed while creating an entry
            p = os.path.join(root, n)
            try:
                if n.startswith(".tmp-") and now - os.stat(p).st_mtime > 3600:
                    _unlink(p)
            except FileNotFoundError:
                pass


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def check_decoded_args(cache: Any, limit: Any) -> int | None:
    """Check ``decoded_cache`` and ``decoded_cache_limit`` (before any work); returns the
    limit in bytes, None for ``"auto"``.

    Raises:
        UsageError: ``cache`` is not ``"auto"``, True, a folder, None or False, or ``limit``
            is not ``"auto"`` or a positive size.
    """
    if not (cache is None or isinstance(cache, (bool, str, os.PathLike))):
        raise UsageError(f"decoded_cache must be 'auto', a folder, or None, got {cache!r}")
    return None if isinstance(limit, str) and limit == "auto" else parse_size(limit, "decoded_cache_limit")


def _choose(places: list[str], explicit: bool, fixed: int | None, need: int) -> tuple[int, str] | None:
    """``(limit, folder)``: the first of ``places`` whose limit holds ``need`` bytes, else the
    one with the largest limit; None when none can be used."""
    best: tuple[int, str] | None = None
    for place in places:
        root = _prepare(place, explicit)
        if root is None:
            if explicit:
                raise UsageError(f"decoded_cache {place}: cannot create or write this folder")
            continue
        lim = fixed if fixed is not None else _auto_limit(root)
        if best is None or lim > best[0] or lim >= need:
            best = (lim, root)
        if lim >= need:
            break
    return best


def plan_decoded(shards: list, size: int, classes: int, cache: Any = "auto",
                 limit: Any = "auto", multilabel: bool = False, verified: bool = True) -> DecodedConfig | None:
    """Decide where the decoded cache of a split lives and which shards it holds.

    Args:
        shards: the split's shards (manifest order).
        size, classes: image side in pixels and number of classes.
        multilabel: the targets are multi-hot vectors (C bytes per sample, not 4).
        verified: the loader checks shard bytes (``verify``); False names the entries
            ``.unverified.dec`` (see :func:`loaders.read.decoded.store.entry_name`).
        cache: ``"auto"``/True (the first of :func:`auto_places` where the whole split fits
            its limit, else the one with the largest limit; a place that is not private is
            replaced by a private folder next to it, with a warning), a folder (which must
            be private), or None/False (off).
        limit: most bytes the folder may hold (all splits together), an int or a size like
            ``"8GB"``; ``"auto"``: half of its file system, within its free space (see
            :func:`_auto_limit`).

    Returns:
        The plan, or None when the cache is off or not even one shard fits.

    Raises:
        UsageError: a bad ``cache`` or ``limit``, or a folder given explicitly that cannot be
            created or written, or is not private (another user's, group- or world-writable,
            a symbolic link).
    """
    fixed = check_decoded_args(cache, limit)
    if cache is None or cache is False:
        return None
    if cache is True or cache == "auto":
        places, explicit = auto_places(), False
    else:
        places, explicit = [os.fspath(cache)], True
    sizes = [entry_bytes(s.samples, size, label_bytes(classes, multilabel)) if s.samples > 0 else 0 for s in shards]
    best = _choose(places, explicit, fixed, sum(sizes))
    if best is None:
        return None
    lim, root = best
    chosen, used = [], 0
    for i, b in enumerate(sizes):
        if used + b > lim:
            break
        used += b
        chosen.append(i)
    if not chosen:
        return None
    try:
        _evict(root, {entry_name(shards[i], size, classes, multilabel, verified): sizes[i] for i in chosen}, lim)
    except (OSError, ValueError) as e:  # a .lock that is not a file, a vanished folder: no cache, no traceback
        log.warning("decoded cache %s: not used: %s", root, getattr(e, "strerror", None) or e)
        return None
    return DecodedConfig(root=root, shards=frozenset(chosen), limit=lim)


def plan_split(spec: Any, cache: Any = "auto", limit: Any = "auto") -> DecodedConfig | None:
    """:func:`plan_decoded` for an opened split (a :class:`loaders.read.spec.Spec`): its shards,
    image side, classes and targets; what ``make_loader`` and ``StyleGANShards`` store as
    ``spec.decoded``."""
    return plan_decoded(spec.shards, spec.size, len(spec.classes), cache, limit, spec.multilabel,
                        getattr(spec, "verify", True))
