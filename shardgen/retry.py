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

__all__ = ["RetryPolicy", "call", "is_transient", "is_unreachable", "error_named", "timed_out",
           "transport_problem", "access_denied"]

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
#: A failed TLS handshake or certificate check (ssl, aiohttp, botocore).
_TLS_NAMED = ("SSLError", "ClientSSLError", "ClientConnectorSSLError", "ClientConnectorCertificateError",
              "SSLCertVerificationError")
#: A host name that does not resolve (socket, aiohttp).
_DNS_NAMED = ("gaierror", "ClientConnectorDNSError")
#: A connection broken off by the other side, mid-request or mid-answer (aiohttp, botocore, urllib3, the OS).
_DROPPED_NAMED = ("ServerDisconnectedError", "ClientPayloadError", "ContentLengthError", "TransferEncodingError",
                  "IncompleteRead", "ResponseStreamingError", "ConnectionClosedError", "ProtocolError",
                  "ConnectionResetError", "ConnectionAbortedError", "BrokenPipeError", "RemoteDisconnected")
#: S3 error codes that mean the credentials or the policy refuse the request.
_DENIED_CODES = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                 "ExpiredToken", "InvalidToken", "InvalidClientTokenId", "AuthorizationHeaderMalformed",
                 "401", "403", "Forbidden", "Unauthorized")


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


def _chain(e: BaseException | None, depth: int = 10) -> list[BaseException]:
    """``e`` and the errors it was raised from or while handling, nearest first."""
    out: list[BaseException] = []
    while e is not None and len(out) < depth:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _status(e: BaseException) -> int | None:
    """The HTTP status of an error answer (aiohttp's ``status``, botocore's response), else None."""
    status = getattr(e, "status", None)
    if status is None:
        meta = (getattr(e, "response", None) or {}) if error_named(e, "ClientError") else {}
        status = meta.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(meta, dict) else None
    return status if isinstance(status, int) else None


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__


def transport_problem(e: BaseException) -> str | None:
    """What went wrong on the way to the storage, in a few words, or None when ``e`` (or an
    error it was raised from) is no transport error. Timeouts are :func:`timed_out`'s.

    The categories, first found in the whole chain wins: a failed TLS handshake, a host name
    that does not resolve, a refused connection, a connection the server closed, an HTTP 5xx
    answer, any other failure to connect. The phrases are fixed text plus the OS's or TLS
    library's reason; they hold no URL (the caller names it, redacted).
    """
    chain = _chain(e)
    for x in chain:
        if error_named(x, *_TLS_NAMED):
            tls = next((y for y in reversed(chain) if error_named(y, "SSLError")), x)  # the ssl module's own
            why = getattr(tls, "verify_message", None) or _short(tls)
            return f"TLS handshake failed ({why}); is it an https:// server, with a certificate this machine trusts?"
    for x in chain:
        if error_named(x, *_DNS_NAMED):
            host = next((getattr(y, "host", None) for y in chain if getattr(y, "host", None)), None)
            why = next((y.strerror for y in chain if error_named(y, "gaierror") and y.strerror), _short(x))
            return f"cannot resolve the host name{f' {host}' if host else ''} ({why})"
    if any(isinstance(x, ConnectionRefusedError) for x in chain):
        return "connection refused (is the server up, and the host and port right?)"
    for x in chain:
        if error_named(x, *_DROPPED_NAMED):
            return f"the server closed the connection before answering in full ({_short(x)})"
    for x in chain:
        status = _status(x)
        if status is not None and status >= 500:
            return f"the server answered HTTP {status} ({_short(x)})"
    for x in chain:
        if is_unreachable(x) or (type(x).__module__.startswith("aiohttp") and isinstance(x, Exception)
                                 and _status(x) is None):
            return f"cannot connect ({_short(x)})"
    return None


def access_denied(e: BaseException) -> str | None:
    """The reason the storage refused the request (``Forbidden``, ``SignatureDoesNotMatch``,
    ``HTTP 403``, a local ``Permission denied``), or None when ``e`` is no refusal."""
    for x in _chain(e):
        if error_named(x, "ClientError") and isinstance(getattr(x, "response", None), dict):
            code = str(x.response.get("Error", {}).get("Code", ""))
            if code in _DENIED_CODES:
                return code
        status = _status(x)
        if status in (401, 403):
            return f"HTTP {status}"
        if isinstance(x, PermissionError):
            return _short(x)
    return None


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
