"""One writer per OUT: the lock a build holds on its output for its whole run.

A local OUT is locked with ``flock(2)`` on ``OUT/.shardgen-work/build.lock`` (the scratch
folder, so a finished build holds no trace of it: the file goes with the scratch folder).
The file records who holds it (:class:`Holder`: user, host, pid, start time, command,
secrets redacted), so that a second build on the same OUT -- any config, with or without
``--overwrite`` -- refuses in one line naming the holder (:class:`OutBusy`, exit 1) before
it has changed anything. The kernel releases an ``flock`` when its last holder exits,
however it exits (``SIGKILL`` included), so a holder record left behind by a killed build
never blocks: the next build takes the lock and writes its own record. The lock is shared
by the build's forked worker processes (they inherit the open file), so a build killed
while its workers still write keeps OUT locked until the last of them has exited.

An OUT on object storage is held with a lease object instead (:mod:`shardgen.build.lease`). The
build (:func:`shardgen.build.run.build`) takes one or the other before it looks at OUT (and
before a Dask cluster starts), and gives it back after ``manifest.json`` is written and the
scratch folder removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import getpass
import json
import math
import os
import shlex
import socket
import sys
import time
from dataclasses import asdict, dataclass

from ..errors import ShardgenError, UsageError
from ..format import WORK_DIR
from ..redact import printable, redact

__all__ = ["LOCK_FILE", "LEASE", "OutBusy", "OutLockLost", "Holder", "LocalLock", "busy", "command_line", "machine_id"]

#: The lock file's name inside the scratch folder ``OUT/.shardgen-work``.
LOCK_FILE = "build.lock"
#: The lease object's path under an OUT URL (:mod:`shardgen.build.lease`).
LEASE = f"{WORK_DIR}/lease.json"
#: The most bytes of a holder record read back (it may have been written by anyone).
MAX_RECORD = 4096
_OPTIONS_WITH_SECRETS = ("--storage_options",)


class OutBusy(ShardgenError):
    """Another build holds OUT (its lock or its lease). Exit code 1."""

    exit_code = 1


class OutLockLost(ShardgenError):
    """This build lost its hold on OUT while running (a lease that expired, a lock file
    removed): it stops before it writes ``manifest.json``. Exit code 1."""

    exit_code = 1


def command_line(argv: list[str] | None = None) -> str:
    """This process's command line for a holder record: secrets redacted, the value of
    ``--storage_options`` left out, at most 1,000 characters."""
    argv = list(sys.argv if argv is None else argv)
    if argv and (argv[0].endswith(("shardgen", "__main__.py")) or argv[0] == "-m"):
        argv[0] = "shardgen"
    elif argv:
        argv[0] = os.path.basename(argv[0])
    words, hide = [], False
    for w in argv:
        name = w.split("=", 1)[0]
        if hide:
            w, hide = "***", False
        elif name in _OPTIONS_WITH_SECRETS:
            hide = "=" not in w
            w = name + ("=***" if "=" in w else "")
        words.append(w)
    text = redact(shlex.join(words)).replace("'***'", "***")
    return text if len(text) <= 1000 else text[:997] + "..."


@dataclass
class Holder:
    """Who holds OUT: what a lock file or a lease records (read back, it is untrusted text).

    Attributes:
        user, host, pid: the holding process.
        started: when it took OUT (UTC, ``YYYY-mm-dd HH:MM:SS``).
        command: its command line (:func:`command_line`).
        token: a random value naming this one hold (leases compare it).
        ttl_s: a lease's time to live in seconds (0 for a lock file).
        machine: the kernel's boot id and PID namespace (:func:`machine_id`): pids mean
            something only where it is this process's too.
    """

    user: str
    host: str
    pid: int
    started: str
    command: str
    token: str = ""
    ttl_s: float = 0.0
    machine: str = ""

    @classmethod
    def now(cls, token: str = "", ttl_s: float = 0.0) -> "Holder":
        """This process, now."""
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.geteuid())
        return cls(user, socket.gethostname(), os.getpid(), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                   command_line(), token, ttl_s, machine_id())

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def parse(cls, raw: bytes | None) -> "Holder | None":
        """The holder a record names (None: empty, unreadable, or not a record)."""
        try:
            d = json.loads((raw or b"")[:MAX_RECORD])
            ttl = float(d.get("ttl_s", 0.0))
            return cls(str(d["user"]), str(d["host"]), int(d["pid"]), str(d["started"]), str(d["command"]),
                       str(d.get("token", "")), ttl if math.isfinite(ttl) else 0.0, str(d.get("machine", "")))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
            return None

    def describe(self, exited: str = "a process it started, such as one of its workers, still holds OUT") -> str:
        """``user alice on host h (pid 12) since ... UTC, running: shardgen build ...``, escaped;
        when that pid has exited on this host, says so, then ``exited``."""
        def text(v: str, n: int) -> str:
            return printable(redact(v), newlines=False)[:n]

        pid = f"pid {self.pid}"
        if self.exited():
            pid += f", which has exited: {exited}"
        return (f"user {text(self.user, 64)} on host {text(self.host, 128)} ({pid}) since "
                f"{text(self.started, 32)} UTC, running: {text(self.command, 300)}")


    def exited(self) -> bool:
        """True only when the holder ran in this very kernel and PID namespace (same
        :func:`machine_id`) and its pid is gone. (A reused pid reads as alive: the safe side.)"""
        return bool(self.machine) and self.machine == machine_id() and self.pid > 0 and not _alive(self.pid)


def machine_id() -> str:
    """``<boot id>/<PID namespace inode>``: the same for two processes only when their pids can
    be compared (same machine, same boot, same PID namespace); empty where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read(64).strip()
        return f"{boot}/{os.stat('/proc/self/ns/pid').st_ino}" if boot else ""
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def busy(out: str, holder: Holder | None, how: str, extra: str = "", **describe: str) -> OutBusy:
    """The one-line refusal naming ``holder``; ``how``: "folder" or "prefix"."""
    who = holder.describe(**describe) if holder is not None else "holder unknown (its record is unreadable)"
    return OutBusy(f"OUT {redact(out)} is in use by another build; nothing was changed: wait for it to finish, or "
                   f"build into another {how}. Held by {who}{extra}")


class LocalLock:
    """The ``flock`` on a local OUT (see the module docstring); :meth:`acquire` it first.

    Attributes:
        note: a line for the user when OUT's filesystem has no file locks (None otherwise).
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.work = os.path.join(out, WORK_DIR)
        self.path = os.path.join(self.work, LOCK_FILE)
        self.fd: int | None = None
        self.made: list[str] = []  # folders this lock created (removed again if left empty)
        self.note: str | None = None

    def acquire(self) -> "LocalLock":
        """Take the lock, or raise.

        Raises:
            OutBusy: another process holds it (nothing was changed).
            UsageError: OUT is not a folder, or cannot be written.
        """
        if os.path.lexists(self.out) and not os.path.isdir(self.out):
            raise UsageError(f"OUT {self.out} exists and is not a folder")
        try:
            self._make_folders()
            for _ in range(10):
                if self._try_once():
                    return self
            raise OutBusy(f"OUT {self.out}: its lock file {self.path} keeps being replaced; is another "
                          "program removing it?")
        except OSError as e:
            self.release()
            raise UsageError(f"OUT {self.out}: cannot write ({e.strerror or e})") from None
        except BaseException:
            self.release()
            raise

    def _make_folders(self) -> None:
        """Create OUT (and any missing parent) and its scratch folder, noting which were made."""
        missing, d = [], os.path.abspath(self.out)
        while not os.path.lexists(d):
            missing.append(d)
            d = os.path.dirname(d)
        for d in list(reversed(missing)) + [os.path.join(os.path.abspath(self.out), WORK_DIR)]:
            try:
                os.mkdir(d)
                self.made.append(d)
            except FileExistsError:
                pass
        if os.path.islink(self.work) or not os.path.isdir(self.work):
            raise UsageError(f"OUT {self.out}: {WORK_DIR} is not a folder (a link or a file); remove it")

    def _try_once(self) -> bool:
        """One try: True once this process holds the lock on the file now at :attr:`path`."""
        # Held open read-only (flock needs no more): a file open for writing would keep OUT's
        # filesystem from being remounted read-only, and the workers inherit this descriptor.
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = Holder.parse(os.pread(fd, MAX_RECORD, 0))
                os.close(fd)
                raise busy(self.out, holder, "folder") from None
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            self.note = (f"OUT {self.out}: its filesystem has no file locks, so nothing stops a second build "
                         "on it while this one runs")
        if not self._same_file(fd):  # removed or replaced between our open and our flock
            os.close(fd)
            return False
        self.fd = fd
        self._write_record()
        return True

    def _write_record(self) -> None:
        """Our :class:`Holder` record into the lock file (skipped where it cannot be written: the
        lock holds without it)."""
        with contextlib.suppress(OSError):
            wfd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                a, b = os.fstat(wfd), os.fstat(self.fd)
                if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
                    os.ftruncate(wfd, 0)
                    os.write(wfd, Holder.now().to_bytes())
            finally:
                os.close(wfd)

    def _same_file(self, fd: int) -> bool:
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        mine = os.fstat(fd)
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def check(self, strict: bool = False) -> None:
        """Raise :class:`OutLockLost` if the lock file was removed or replaced since :meth:`acquire`
        (then another build may take OUT); ``strict`` is for the lease's sake (same check here)."""
        if self.fd is not None and not self._same_file(self.fd):
            raise OutLockLost(f"OUT {self.out}: the lock file {self.path} was removed or replaced while "
                              "building, so another build may be writing OUT; stopped before writing "
                              "manifest.json")

    def release(self) -> None:
        """Give the lock back: the lock file (if still ours) and the folders it created go."""
        if self.fd is not None:
            if self._same_file(self.fd):
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        for d in reversed(self.made):
            with contextlib.suppress(OSError):  # not empty: the build's files stay
                os.rmdir(d)
        self.made = []
