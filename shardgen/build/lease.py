"""One writer per OUT on object storage: a lease object, renewed while the build runs.

The lease is ``OUT/.shardgen-work/lease.json`` (:data:`~shardgen.build.lock.LEASE`): a
:class:`~shardgen.build.lock.Holder` record (who, since when, the command, a random token, its time
to live) and the count of its renewals.

**Where the store honours conditional writes** (S3 ``PUT`` with ``If-None-Match: *`` and
``If-Match: <etag>``; checked at run time, see below), a build

1. creates the lease with ``If-None-Match: *``: of two builds only one create succeeds;
2. finding a lease there, takes it over only once it has expired (its last write, by the
   store's own clock, ``Date`` minus ``Last-Modified``, is older than its TTL), with
   ``If-Match`` on the ETag it read: of two builds taking over, only one succeeds;
3. renews it every TTL/3 with ``If-Match`` on its own last ETag: a renewal that fails that
   condition means another build took the lease over (this one was stalled past its TTL);
   the build then stops at its next finished job and never writes ``manifest.json``
   (:class:`~shardgen.build.lock.OutLockLost`);
4. deletes it at the end with ``If-Match``.

Whether the store honours ``If-None-Match`` is checked after the lease is created: the same
``PUT`` again must be refused. **A store that ignores it** gets the fallback: read the lease
first (refuse a live one), write it, wait :data:`SETTLE_S`, read it back and go on only if it
still holds this build's token; renewals read before they write. Two builds that start within
the same moment can then both go on; docs/object-storage.md says what each store guarantees.
Other fsspec stores (not ``s3://``) always get the fallback, and there a lease's age comes
from the clock of the machine that wrote it (``renewed_unix``), so machines must agree on
the time to within the TTL.

The TTL is :data:`DEFAULT_TTL_S` (the environment variable ``SHARDGEN_LEASE_TTL`` overrides
it, in seconds, from 2 to 3600): a killed build's lease can be taken over that long after
its last renewal -- or at once by a build on the same machine (same boot id and PID
namespace, :func:`~shardgen.build.lock.machine_id`) that finds the holder's pid gone.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import UsageError
from .lock import LEASE, MAX_RECORD, Holder, OutBusy, OutLockLost, busy
from ..redact import redact
from ..storage.protocols import S3_PROTOCOLS, protocols_of
from ..storage.io import retried

__all__ = ["LEASE", "DEFAULT_TTL_S", "SETTLE_S", "ENV_TTL", "Lease", "lease_ttl"]

#: Seconds a lease lives without renewal (renewed every third of it).
DEFAULT_TTL_S = 60.0
#: The environment variable that sets the TTL (seconds, 2 to 3600).
ENV_TTL = "SHARDGEN_LEASE_TTL"
#: Seconds a store without conditional writes is given to show a competing write before the
#: lease is read back.
SETTLE_S = 2.0
_TTL_RANGE = (2.0, 3600.0)
# Fork (the build's worker processes) waits for a renewal in flight, so that no child starts
# with the renewal's locks taken.
_RENEWING = threading.Lock()
_FORK_HOOKED: list[bool] = []


class _Conflict(Exception):
    """A conditional write or delete was refused (412, 409): another build moved first."""


def lease_ttl(value: str | None = None) -> float:
    """The TTL in seconds: ``value`` (default: ``$SHARDGEN_LEASE_TTL``), else :data:`DEFAULT_TTL_S`.

    Raises:
        UsageError: not a number from 2 to 3600.
    """
    value = os.environ.get(ENV_TTL) if value is None else value
    if value in (None, ""):
        return DEFAULT_TTL_S
    try:
        ttl = float(value)
    except ValueError:
        ttl = -1.0
    if not _TTL_RANGE[0] <= ttl <= _TTL_RANGE[1]:
        raise UsageError(f"{ENV_TTL}={value!r}: expected seconds from 2 to 3600")
    return ttl


def _error_code(e: BaseException) -> tuple[str, int | None]:
    """(S3 error code, HTTP status) of a botocore error, or of the one s3fs translated."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        resp = getattr(cur, "response", None)
        if isinstance(resp, dict):
            return str(resp.get("Error", {}).get("Code", "")), resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
        cur = cur.__cause__ or cur.__context__
    return "", None


def _is_conflict(e: BaseException) -> bool:
    code, status = _error_code(e)
    return isinstance(e, FileExistsError) or code in ("PreconditionFailed", "ConditionalRequestConflict") \
        or status in (409, 412)


@dataclass
class _Seen:
    """The lease as read: its holder (None: not a record), ETag and age in seconds."""

    holder: Holder | None
    etag: str | None
    age_s: float

    @property
    def ttl_s(self) -> float:
        """The holder's TTL, within 2 to 3600 s (:data:`DEFAULT_TTL_S` for a lease that is not a record)."""
        ttl = self.holder.ttl_s if self.holder is not None else DEFAULT_TTL_S
        return min(max(ttl, _TTL_RANGE[0]), _TTL_RANGE[1])

    def expired(self) -> bool:
        return self.age_s > self.ttl_s


class Lease:
    """The lease on an OUT URL (see the module docstring); :meth:`acquire` it first.

    Args:
        loc: OUT, a :class:`~shardgen.storage.location.Location`.
        ttl_s: the TTL (default :func:`lease_ttl`).

    Attributes:
        guarded: the store honours conditional writes (known after :meth:`acquire`).
        note: a line for the user when it does not (None otherwise).
    """

    def __init__(self, loc: Any, ttl_s: float | None = None) -> None:
        self.url = loc.url
        self.fs = loc.fs()
        self.s3 = bool(protocols_of(self.fs) & set(S3_PROTOCOLS))
        self.path = f"{self.fs._strip_protocol(loc.url).rstrip('/')}/{LEASE}"
        self.ttl_s = lease_ttl() if ttl_s is None else ttl_s
        self.token = secrets.token_hex(16)
        self.holder = Holder.now(self.token, self.ttl_s)
        self.etag: str | None = None
        self.guarded = False
        self.note: str | None = None
        self.renewals = 0
        self._lost: str | None = None
        self._renewed = time.monotonic()  # the last write that held the lease
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the store ---------------------------------------------------------------------------
    def _body(self) -> bytes:
        return json.dumps(dict(asdict(self.holder), renewals=self.renewals, renewed_unix=time.time()),
                          sort_keys=True).encode() + b"\n"

    def _read(self) -> _Seen | None:
        """The lease now (None: there is none)."""
        try:
            if self.s3:
                raw, etag, age = retried(self._s3_get)
            else:
                raw, etag = retried(lambda: self.fs.cat_file(self.path)), None
                age = time.time() - float(json.loads(raw[:MAX_RECORD]).get("renewed_unix", 0))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, AttributeError):
            raw, etag, age = b"", None, float("inf")
        return _Seen(Holder.parse(raw), etag, age)

    def _s3_get(self) -> tuple[bytes, str | None, float]:
        """(body, ETag, age by the store's clock) with one GET."""
        from fsspec.asyn import sync

        bucket, key, _ = self.fs.split_path(self.path)

        async def get():
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            body = resp["Body"]
            try:
                return resp, await body.read(MAX_RECORD)
            finally:
                body.close()

        resp, raw = sync(self.fs.loop, get)
        now = email.utils.parsedate_to_datetime(resp["ResponseMetadata"]["HTTPHeaders"]["date"])
        return raw, resp.get("ETag"), (now - resp["LastModified"]).total_seconds()

    def _write(self, if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """Write the lease (conditionally on S3); returns its new ETag.

        Raises:
            _Conflict: the condition failed.
        """
        body = self._body()
        try:
            if not self.s3:
                retried(lambda: self.fs.pipe_file(self.path, body))
                return None
            bucket, key, _ = self.fs.split_path(self.path)
            cond = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
            resp = retried(lambda: self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body,
                                                   ContentType="application/json", **cond))
            return resp.get("ETag")
        except Exception as e:  # noqa: BLE001 - a refused condition is an answer, not an error
            if _is_conflict(e):
                raise _Conflict() from None
            raise

    # -- taking and holding ------------------------------------------------------------------
    def acquire(self) -> "Lease":
        """Take the lease, or raise; starts its renewal.

        Raises:
            OutBusy: another build holds a live lease (nothing was changed).
        """
        for _ in range(5):
            seen = self._read()
            if seen is not None and seen.holder is not None and seen.holder.token == self.token:
                self.etag = seen.etag  # our own write, answered after a retry
                break
            if seen is not None and not seen.expired() and not (seen.holder and seen.holder.exited()):
                raise self._busy(seen)  # live (an exited holder of this machine is taken over at once)
            try:
                self.etag = self._write(if_none_match=seen is None, if_match=seen.etag if seen else None)
                break
            except _Conflict:
                continue  # another build moved between our read and our write: look again
        else:
            raise self._busy(self._read())
        self._check_guarded()
        self._renewed = time.monotonic()
        self._start_renewal()
        return self

    def _busy(self, seen: _Seen | None) -> OutBusy:
        if seen is None:
            return busy(self.url, None, "prefix")
        age = f", written {seen.age_s:.0f} s ago" if math.isfinite(seen.age_s) else ""
        return busy(self.url, seen.holder, "prefix", f"; its lease {LEASE} expires {seen.ttl_s:.0f} s after its "
                    f"last renewal{age}")

    def _check_guarded(self) -> None:
        """Does the store refuse a second ``If-None-Match: *`` write? Else fall back (module docstring)."""
        if self.s3:
            try:
                self.etag = self._write(if_none_match=True)
            except _Conflict:
                self.guarded = True
                return
        self.note = (f"OUT {redact(self.url)}: the store does not honour conditional writes, so the lease on OUT is "
                     "checked by reading it back; two builds started at the same moment are not kept apart")
        time.sleep(SETTLE_S)
        seen = self._read()
        if seen is None or seen.holder is None or seen.holder.token != self.token:
            self.etag = None  # not ours to delete
            raise self._busy(seen)
        self.etag = seen.etag

    def _start_renewal(self) -> None:
        if not _FORK_HOOKED:
            os.register_at_fork(before=_RENEWING.acquire, after_in_parent=_RENEWING.release,
                                after_in_child=_RENEWING.release)
            _FORK_HOOKED.append(True)
        self._thread = threading.Thread(target=self._renew_loop, name="shardgen-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            if not self._renew_now(quiet=True):
                return

    def _renew_now(self, quiet: bool) -> bool:
        """Renew the lease now; False once it is lost (:attr:`_lost` says why). Transient store
        errors are let pass (``quiet``) until no renewal has succeeded for a whole TTL."""
        with _RENEWING:
            if self._lost is not None:
                return False
            try:
                self._renew()
                self._renewed = time.monotonic()
                return True
            except _Conflict:
                self._lost = "another build took its lease over (this one was stalled past the lease's TTL)"
            except Exception as e:  # noqa: BLE001 - a store that does not answer: the next tick tries again
                if quiet and time.monotonic() - self._renewed <= self.ttl_s:
                    return True
                self._lost = f"its lease could not be renewed for {self.ttl_s:.0f} s ({type(e).__name__})"
            return False

    def _renew(self) -> None:
        self.renewals += 1
        if self.guarded:
            self.etag = self._write(if_match=self.etag)
            return
        seen = self._read()
        if seen is None or seen.holder is None or seen.holder.token != self.token:
            raise _Conflict()
        self.etag = self._write()

    def check(self, strict: bool = False) -> None:
        """Raise :class:`~shardgen.build.lock.OutLockLost` once the lease is lost. ``strict`` (just before
        ``manifest.json`` is written) renews it first, so that a build stalled past its TTL learns
        it lost the lease before it publishes, not a renewal period later."""
        if strict and self._lost is None:
            self._renew_now(quiet=False)
        if self._lost is not None:
            raise OutLockLost(f"OUT {redact(self.url)}: {self._lost}; stopped before writing manifest.json, "
                              "so readers never see this build's manifest over another build's shards")

    def release(self) -> None:
        """Stop renewing and delete the lease, if it is still ours (errors ignored: it expires)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._lost is not None or (self.etag is None and self.s3):
            return
        with contextlib.suppress(Exception):
            if self.guarded:
                self._delete_if_match()
            else:
                seen = self._read()
                if seen is not None and seen.holder is not None and seen.holder.token == self.token:
                    retried(lambda: self.fs.rm_file(self.path))
        self.etag = None

    def _delete_if_match(self) -> None:
        bucket, key, _ = self.fs.split_path(self.path)
        try:
            retried(lambda: self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self.etag))
        except Exception as e:  # noqa: BLE001
            if _is_conflict(e):
                return  # not ours any more
            code, status = _error_code(e)
            if status != 501 and code != "NotImplemented":
                raise
            seen = self._read()  # a store without conditional deletes
            if seen is not None and seen.holder is not None and seen.holder.token == self.token:
                retried(lambda: self.fs.rm_file(self.path))
