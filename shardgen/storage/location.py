"""A folder as a path or fsspec URL with the options that open it: :class:`Location`.

Picklable and holding no open handle, so that every worker process (local or on a Dask
cluster) opens its own filesystem and reads its sources and writes its files directly; no
image bytes pass through the client. Credentials stay in the options (or the environment)
and are never written into the build or into a message.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import UsageError
from .filesystems import filesystem, storage_options_for
from .protocols import S3_PROTOCOLS

__all__ = ["Location", "location"]

_CREDENTIAL_ENV = {"key": "AWS_ACCESS_KEY_ID", "secret": "AWS_SECRET_ACCESS_KEY", "token": "AWS_SESSION_TOKEN"}


@dataclass(frozen=True)
class Location:
    """A folder as a path or fsspec URL, with the options that open it (picklable, no open handles).

    Attributes:
        url: the URL (or local path) as given, without a trailing ``/``.
        options: fsspec options, the S3 endpoint settled (:func:`~shardgen.storage.storage_options_for`);
            left out of ``repr`` because it may hold credentials.
    """

    url: str
    options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def fs(self) -> Any:
        """This process's filesystem for the location (fsspec caches it per process)."""
        return filesystem(self.url, self.options)[0]

    def join(self, rel: str) -> str:
        return f"{self.url.rstrip('/')}/{rel}" if rel else self.url

    def with_env_credentials(self) -> "Location":
        """The same, carrying this process's ``AWS_*`` credentials in its options (for workers
        elsewhere that have none of their own); unchanged when the options name credentials."""
        protocol = self.url.split("://", 1)[0]
        if protocol not in S3_PROTOCOLS or any(k in self.options for k in ("key", "secret", "profile", "anon")):
            return self
        creds = {k: os.environ[v] for k, v in _CREDENTIAL_ENV.items() if os.environ.get(v)}
        return Location(self.url, dict(self.options, **creds)) if "key" in creds else self


def location(url: str, storage_options: dict[str, Any] | None = None, endpoint_url: str | None = None) -> Location:
    """A :class:`Location` for ``url``.

    Raises:
        UsageError: ``endpoint_url`` for a URL that is not ``s3://``; no bucket in an ``s3://`` URL.
    """
    url = str(url).rstrip("/")
    if url.startswith(("s3://", "s3a://")) and not url.split("://", 1)[1].split("/")[0]:
        raise UsageError(f"{url}: no bucket in the URL (expected s3://bucket/prefix)")
    return Location(url, storage_options_for(url, storage_options, endpoint_url))
