"""Transport failures and refusals of a build's storage as one-line errors naming the URL.

Every read of a build (:mod:`shardgen.storage`: the manifest, ``dataset.json``, shards and
the other files, through :func:`open_guarded`) maps what the filesystem raises with
:func:`storage_error`, so that ``info``, ``verify``, ``export``, ``stylegan``, ``preview``
and ``diff`` say the same thing for the same failure, and never print a traceback:

- :class:`~shardgen.errors.TransportError` (exit 1): a timeout, a failed TLS handshake, a
  host name that does not resolve, a refused connection, a connection the server closed
  (a server that answers HEAD and drops GET), an HTTP 5xx answer, any other failure to
  connect (:func:`shardgen.retry.transport_problem`);
- :class:`~shardgen.errors.AccessDenied` (exit 2): the storage refused the credentials
  (HTTP 401/403, S3 ``AccessDenied``/``InvalidAccessKeyId``/``SignatureDoesNotMatch``), or
  a local file's permissions (:func:`shardgen.retry.access_denied`).

fsspec's http reports a refused connection, a DNS failure or a 403 as
``FileNotFoundError`` raised from the real error; :func:`storage_error` looks along that
chain, so these are never mistaken for a missing file. Messages name the URL redacted
(:func:`shardgen.redact.redact`: no userinfo, no signature).

The build's side (listing SRC, preparing OUT, its lease) wraps its storage calls in
:func:`storage_errors`, which says the same failures as one usage error (exit 2) naming what
the build was doing, secrets scrubbed (:mod:`.scrub`).
"""

from __future__ import annotations

import contextlib
import urllib.parse
from typing import Any, Iterator

from ..errors import AccessDenied, ShardgenError, TransportError, UsageError
from ..redact import redact
from ..retry import access_denied, error_named, is_unreachable, timed_out, transport_problem
from .scrub import Scrubber, display_url, short

__all__ = ["storage_error", "GuardedFile", "open_guarded", "storage_failure", "storage_errors", "endpoint_of",
           "NO_CREDENTIALS"]


def _access_hint(url: str) -> str:
    if "://" not in str(url) or str(url).startswith("file://"):
        return "check the folder's permissions"
    if str(url).split("://", 1)[0].lower() in ("s3", "s3a"):
        return ("check the credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
                "storage_options) and the bucket's policy")
    return "check the credentials or token the URL needs"


def storage_error(e: BaseException, url: str, timeout: float | None = None) -> UsageError | None:
    """The one-line error for ``e``, raised while reading ``url``, or None when ``e`` is neither
    a transport failure nor a refusal (a missing file, bad data: the caller's to say).

    Args:
        e: what the filesystem raised (the error it was raised from is looked at too: fsspec's
            http reports a refused connection or a 403 as ``FileNotFoundError``).
        url: what was being read; redacted in the message.
        timeout: the connect and read timeout in force, in seconds, named when it ran out.

    Returns:
        :class:`~shardgen.errors.TransportError` (exit 1) for a timeout, TLS, DNS, refused or
        dropped connection or HTTP 5xx; :class:`~shardgen.errors.AccessDenied` (exit 2) for
        denied credentials or permissions; None otherwise.
    """
    where = redact(str(url))
    if timed_out(e):
        limit = f"within the {timeout:g} s timeout" if timeout else "in time"
        return TransportError(f"{where}: cannot read: the server did not answer {limit} (connect or read timeout)")
    denied = access_denied(e)
    if denied is not None:
        if "://" not in str(url) or str(url).startswith("file://"):
            return AccessDenied(f"{where}: permission denied ({redact(denied)})")
        return AccessDenied(f"{where}: access denied ({redact(denied)}); {_access_hint(url)}")
    problem = transport_problem(e)
    return TransportError(f"{where}: cannot read: {redact(problem)}") if problem else None


def _raise_mapped(e: BaseException, url: str, timeout: float | None) -> None:
    """Raise :func:`storage_error`'s error for ``e`` (from None) when there is one."""
    err = storage_error(e, url, timeout)
    if err is not None:
        raise err from None


class GuardedFile:
    """A file of a build whose transport failures and refusals become the one-line errors
    of :func:`storage_error`, naming its URL; anything else is raised unchanged."""

    def __init__(self, f: Any, url: str, timeout: float | None) -> None:
        self._f, self._url, self._timeout = f, url, timeout

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except Exception as e:
            _raise_mapped(e, self._url, self._timeout)
            raise

    def close(self) -> None:
        try:
            self._f.close()
        except Exception as e:
            _raise_mapped(e, self._url, self._timeout)
            raise

    def __enter__(self) -> "GuardedFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def open_guarded(fs: Any, path: str, url: str, timeout: float | None, **kwargs: Any) -> Any:
    """``fs.open(path, "rb", **kwargs)``, guarded (:class:`GuardedFile`) unless ``fs`` is the
    local filesystem (whose errors are plain ``OSError``s its callers already report per
    file); raises what :func:`storage_error` maps."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        return fs.open(path, "rb", **kwargs)
    try:
        f = fs.open(path, "rb", **kwargs)
    except Exception as e:
        _raise_mapped(e, url, timeout)
        raise
    return GuardedFile(f, url, timeout)


#: The error names of botocore's missing-credentials errors.
NO_CREDENTIALS = ("NoCredentialsError", "PartialCredentialsError")


def endpoint_of(e: BaseException, fallback: str | None) -> str:
    """The endpoint an error names (scheme and host only, so no credentials), else ``fallback``."""
    url = getattr(e, "kwargs", {}).get("endpoint_url") if hasattr(e, "kwargs") else None
    if url:
        p = urllib.parse.urlsplit(url)
        return display_url(urllib.parse.urlunsplit((p.scheme, p.netloc, "", "", "")))
    return fallback or "the storage endpoint"


def storage_failure(e: BaseException, url: str, doing: str, endpoint: str | None = None,
                    missing: str | None = None) -> str | None:
    """The one line (not yet scrubbed) for a storage failure ``e`` while ``doing`` something to
    ``url``: the build's writes and listings (:func:`storage_errors`) and upload's destination
    say the same thing for the same failure. None: ``e`` is not a storage failure.

    Args:
        endpoint: the S3 endpoint in use, named when it cannot be reached.
        missing: what a missing object on S3 means to the caller (default: the bucket may not exist).
    """
    where = display_url(url)
    if is_unreachable(e) or timed_out(e):
        return (f"{where}: cannot reach {endpoint_of(e, endpoint)} while {doing} "
                "(is the endpoint URL right and the server up?)")
    if error_named(e, *NO_CREDENTIALS):
        return (f"{where}: no credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or a profile "
                "in ~/.aws) or pass --storage_options")
    denied = access_denied(e)
    if denied is not None or isinstance(e, PermissionError):
        return f"{where}: access denied while {doing} ({(denied or short(e)).strip() or 'Forbidden'}); " + \
            _access_hint(url)
    if isinstance(e, FileNotFoundError) and str(url).split("://", 1)[0].lower() in ("s3", "s3a"):
        bucket = str(url).split("/")[2]
        return f"{where}: " + (missing or f"not found while {doing} (does the bucket {bucket!r} exist?)")
    if isinstance(e, OSError):
        return f"{where}: storage error while {doing} ({short(e)})"
    return None


@contextlib.contextmanager
def storage_errors(url: str, doing: str, storage_options: dict[str, Any] | None = None) -> Iterator[None]:
    """Turn a storage failure while ``doing`` into one line (exit 2, :func:`storage_failure`),
    credentials scrubbed.

    Raises:
        UsageError: unreachable endpoint, no or wrong credentials, missing bucket, other OSError.
    """
    try:
        yield
    except ShardgenError:
        raise
    except Exception as e:  # noqa: BLE001 - classified below, re-raised when not a storage error
        endpoint = ((storage_options or {}).get("client_kwargs") or {}).get("endpoint_url")
        msg = storage_failure(e, url, doing, endpoint)
        if msg is None:
            raise
        raise UsageError(Scrubber(storage_options)(msg)) from None
