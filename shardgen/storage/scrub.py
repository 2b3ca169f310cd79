"""Keeping credentials out of messages: upload's, and those of the build's storage calls
(:func:`shardgen.storage.transport.storage_errors`)."""

from __future__ import annotations

import os
import re
import urllib.parse
from typing import Any

__all__ = ["Scrubber", "display_url", "short"]

_SECRET_OPT = re.compile(r"(secret|token|password|passwd|key|credential|sas|signature)", re.I)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")


def _secret_values(storage_options: dict[str, Any] | None) -> list[str]:
    """Secret values from the environment and ``storage_options``, longest first."""
    vals = [os.environ.get(k, "") for k in _SECRET_ENV]

    def walk(d: Any) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                if isinstance(v, (dict, list, tuple)):
                    walk(v)
                elif isinstance(v, str) and _SECRET_OPT.search(str(k)):
                    vals.append(v)
        elif isinstance(d, (list, tuple)):
            for v in d:
                walk(v)

    walk(storage_options or {})
    return sorted({v for v in vals if v and len(v) >= 4}, key=len, reverse=True)


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    try:
        p = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if p.username or p.password:
        host = p.hostname or ""
        if p.port:
            host += f":{p.port}"
        return urllib.parse.urlunsplit((p.scheme, host, p.path, p.query, p.fragment))
    return url


class Scrubber:
    """Replaces every known secret value (and any ``user:password@`` in URLs) in a message."""

    def __init__(self, storage_options: dict[str, Any] | None):
        self.secrets = _secret_values(storage_options)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return re.sub(r"(https?://)[^/@\s]+@", r"\1", text)


def short(e: BaseException) -> str:
    """``Type: first line of the message`` of an error."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
