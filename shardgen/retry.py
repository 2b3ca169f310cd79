"""One retry policy for transient I/O errors: upload's transfers and the loaders' remote reads.

A call is tried up to ``attempts`` times. Before try ``k + 2`` (``k`` counting from 0) it
waits ``min(max_wait_s, backoff_s * 2**k)`` seconds, scaled by a random factor in
``[0.5, 1)`` when ``jitter`` is on. Only errors that :func:`is_transient` accepts are
retried (timeouts included: a connect or read timeout is transient); anything else (access denied, a missing object or bucket, bad arguments,
missing credentials) is raised at once, since waiting cannot fix it. With
``deadline_s``, no retry starts once ``deadline_s`` seconds (waits included) would have
passed since the first try, so a server that times out every request costs at most
``deadline_s`` plus one try, however many retries are allowed.

Why not tenacity: the whole policy is the loop in :func:`call`; tenacity would add a
dependency to every training job that imports ``loaders``, its exponential-jitter wait
is a different formula from the one both callers document, and the callers' messages
and counters need callbacks either way.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from .errors import UsageError

__all__ = ["RetryPolicy", "call", "is_transient", "is_unreachable", "error_named", "timed_out"]

T = TypeVar("T")

#: Built-in errors that a retry cannot fix.
_PERMANENT = (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
              UsageError, ValueError, TypeError, KeyError, ImportError)
#: botocore errors (matched by class name, so botocore need not be installed) that a retry cannot fix.
_PERMANENT_NAMED = ("NoCredentialsError", "PartialCredentialsError", "ParamValidationError", "NoRegionError")
#: Errors that mean the endpoint could not be reached at all (botocore, aiohttp, the OS).
_UNREACHABLE_NAMED = ("EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError",
                      "ClientConnectorError")

#: Timeouts (aiohttp, botocore, fsspec) that are not builtin TimeoutErrors.
_TIMEOUT_NAMED = ("ReadTimeoutError", "ConnectTimeoutError", "ServerTimeoutError", "FSTimeoutError")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        attempts: tries in all, at least 1 (``retries + 1``).
        backoff_s: the first wait, in seconds; it doubles per retry.
        max_wait_s: the longest single wait, in seconds.
        jitter: scale each wait by a random factor in ``[0.5, 1)`` (spreads out the
            retries of many clients after a shared outage).
        deadline_s: start no retry that would begin later than this many seconds after
            the first try (None: no limit; the attempts alone bound it).
    """

    attempts: int
    backoff_s: float
    max_wait_s: float
    jitter: bool = False
    deadline_s: float | None = None

    @classmethod
    def with_retries(cls, retries: int, backoff_s: float, max_wait_s: float, jitter: bool = False,
                     deadline_s: float | None = None) -> "RetryPolicy":
        """The policy for ``retries`` further attempts after the first (negative counts as 0)."""
        return cls(max(0, int(retries)) + 1, float(backoff_s), float(max_wait_s), jitter, deadline_s)

    @property
    def retries(self) -> int:
        """Attempts after the first."""
        return self.attempts - 1

    def wait_s(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry + 1`` (``retry`` counts from 0)."""
        wait = min(self.max_wait_s, self.backoff_s * (2 ** retry))
        return wait * (0.5 + random.random() / 2) if self.jitter else wait


def error_named(e: BaseException, *names: str) -> bool:
    """``e`` is an instance of a class called one of ``names`` (checked along its MRO)."""
    return any(c.__name__ in names for c in type(e).__mro__)


def is_transient(e: BaseException) -> bool:
    """Might ``e`` go away on a retry? False for access, missing objects, bad arguments, credentials."""
    if isinstance(e, _PERMANENT):
        return timed_out(e.__cause__)  # fsspec's http reports a timed-out HEAD/GET as FileNotFoundError
    return isinstance(e, Exception) and not error_named(e, *_PERMANENT_NAMED)


def timed_out(e: BaseException | None) -> bool:
    """``e``, or an error it was raised from, is a timeout (builtin, aiohttp, botocore or fsspec)."""
    for _ in range(10):
        if e is None:
            return False
        if isinstance(e, TimeoutError) or error_named(e, *_TIMEOUT_NAMED):
            return True
        e = e.__cause__ or e.__context__
    return False


def is_unreachable(e: BaseException) -> bool:
    """``e`` says the endpoint did not answer (connection refused, DNS, connect timeout)."""
    return isinstance(e, ConnectionRefusedError) or error_named(e, *_UNREACHABLE_NAMED)


def call(fn: Callable[[], T], policy: RetryPolicy, is_transient: Callable[[BaseException], bool] = is_transient,
         on_retry: Callable[[BaseException, int, float], None] | None = None) -> T:
    """Run ``fn`` under ``policy``; return its result.

    Args:
        fn: the operation (no arguments).
        policy: attempts and waits.
        is_transient: which errors are retried (default :func:`is_transient`).
        on_retry: called as ``on_retry(error, retry_number, wait_s)`` before each wait
            (``retry_number`` counts from 1), e.g. to log or count.

    Raises:
        Exception: the error of the last attempt, or the first error that is not
            transient, unchanged (callers turn it into their own message; whether the
            retries ran out is ``is_transient(error)``).
    """
    retry = 0
    start = time.monotonic()
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient(e) or retry + 1 >= policy.attempts:
                raise
            wait = policy.wait_s(retry)
            if policy.deadline_s is not None and time.monotonic() - start + wait > policy.deadline_s:
                raise
            retry += 1
            if on_retry is not None:
                on_retry(e, retry, wait)
            time.sleep(wait)
