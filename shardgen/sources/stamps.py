"""Is a source file still the one a conversion chunk read? The resume's rule (issue 13).

When a chunk is converted, each source file's stat *stamp* is recorded just before the
file is read: ``[st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns, read_ns]``
(``os.stat``, following symbolic links; ``read_ns`` is this machine's clock then), next
to the xxh64 of the bytes that were converted. On resume a source is

* **trusted without reading it** when its stamp is unchanged: same device, inode, size,
  mtime and ctime, and it had not been modified (mtime or ctime) within
  :data:`RECENT_NS` of being read;
* **re-hashed** otherwise (any of those differs, it was modified recently, it has no
  stamp, or ``--rehash`` was given): its bytes are read again and compared with the
  recorded xxh64. Equal bytes still reuse the chunk; different bytes reconvert it.

What this catches without reading: any write to the file (it sets mtime and ctime),
including one that restores the old mtime afterwards (``touch -d``, ``cp -p``, ``rsync -t``:
ctime cannot be set back); a file replaced by another one (rename, copy, a re-pointed
symbolic link: another inode or device). The window ``RECENT_NS`` covers writes made in
the same timestamp tick as the read (coarse filesystem clocks, up to 2 s on FAT): a file
written then would keep its stamp, so it is never trusted. What it does not catch: a
filesystem that changes content without updating mtime or ctime, or whose clock runs
more than ``RECENT_NS`` behind this machine's; ``--rehash`` is for those.
"""

from __future__ import annotations

import os
import time

__all__ = ["RECENT_NS", "stamp_of", "unchanged"]

#: A source modified less than this long before it was read is never trusted by its stamp (ns).
RECENT_NS = 2_000_000_000


def stamp_of(path: str) -> list[int] | None:
    """The stamp of ``path`` now, to be taken just before reading it (None: it cannot be stat'ed)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, time.time_ns()]


def unchanged(stamp: list[int] | None, path: str) -> bool:
    """``path`` still has the recorded ``stamp``, and that stamp is old enough to be trusted."""
    if not isinstance(stamp, list) or len(stamp) != 6 or not all(type(v) is int for v in stamp):
        return False
    dev, ino, size, mtime, ctime, read_ns = stamp
    if read_ns - max(mtime, ctime) < RECENT_NS:
        return False
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (dev, ino, size, mtime, ctime)
