"""One retry policy for transient I/O errors: upload's transfers and the loaders' remote reads.

A call is tried up to ``attempts`` times. Before try ``k + 2`` (``k`` counting from 0) it
waits ``min(max_wait_s, backoff_s * 2**k)`` seconds, scaled by a random factor in
``[0.5, 1)`` when ``jitter`` is on. Only errors that :func:`is_transient` accepts are
retried; anything else (access denied, a missing object or bucket, bad arguments,
missing credentials) is raised at once, since waiting cannot fix it.

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

__all__ = ["RetryPolicy", "call", "is_transient", "is_unreachable", "error_named"]

T = TypeVar("T")

#: Built-in errors that a retry cannot fix.
_PERMANENT = (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
              UsageError, ValueError, TypeError, KeyError, ImportError)
#: botocore errors (matched by class name, so botocore need not be installed) that a retry cannot fix.
_PERMANENT_NAMED = ("NoCredentialsError", "PartialCredentialsError", "ParamValidationError", "NoRegionError")
#: Errors that mean the endpoint could not be reached at all (botocore, aiohttp, the OS).
_UNREACHABLE_NAMED = ("EndpointConnectionError", "ConnectTimeoutError", "ProxyConnectionError",
                      "ClientConnectorError")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        attempts: tries in all, at least 1 (``retries + 1``).
        backoff_s: the first wait, in seconds; it doubles per retry.
        max_wait_s: the longest single wait, in seconds.
        jitter: scale each wait by a random factor in ``[0.5, 1)`` (spreads out the
            retries of many clients after a shared outage).
    """

    attempts: int
    backoff_s: float
    max_wait_s: float
    jitter: bool = False

    @classmethod
    def with_retries(cls, retries: int, backoff_s: float, max_wait_s: float, jitter: bool = False) -> "RetryPolicy":
        """The policy for ``retries`` further attempts after the first (negative counts as 0)."""
        return cls(max(0, int(retries)) + 1, float(backoff_s), float(max_wait_s), jitter)

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
        return False
    return isinstance(e, Exception) and not error_named(e, *_PERMANENT_NAMED)


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
    while True:
        try:
            return fn()
        except Exception as e:
            if not is_transient(e) or retry + 1 >= policy.attempts:
                raise
            wait = policy.wait_s(retry)
            retry += 1
            if on_retry is not None:
                on_retry(e, retry, wait)
            time.sleep(wait)
