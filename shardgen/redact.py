"""The one place that makes text safe to show: secrets redacted, terminal controls escaped.

Everything shardgen prints, logs or raises may hold a URL the user typed or a build
named (``https://user:password@host/...``, a presigned ``?X-Amz-Signature=...``), an
argument echoed back, or names read from a build someone else published (class names,
keys, paths), which may carry terminal escape sequences. :func:`safe` is applied to
every line the CLI prints and to every message the loaders raise; the two halves are
public for the places that need only one:

- :func:`redact`: the userinfo of every URL becomes ``***``, and so does the value of every
  query parameter or ``name=value`` / ``"name": "value"`` pair whose name says it is a
  secret (:data:`SECRET_NAMES`: signatures, tokens, passwords, secret keys);
- :func:`printable`: C0 and C1 control characters (ESC, BEL, CR, DEL ...) and the Unicode
  bidirectional overrides become visible escapes (``\\x1b``, ``\\u202e``); newlines and tabs
  are kept unless ``newlines=False``.

Redaction never needs to know where the text came from, so it can be applied late, once,
where the text leaves the program.
"""

from __future__ import annotations

import re

__all__ = ["SECRET_NAMES", "REDACTED", "redact", "redact_url", "printable", "safe", "safe_json"]

#: What a secret is replaced with.
REDACTED = "***"

#: Names (compared ignoring case) of query parameters and ``name=value`` pairs whose values
#: are secrets: AWS SigV2/SigV4 presigned URLs, Google Cloud Storage and Azure SAS
#: signatures, OAuth tokens, and the credential names of s3fs, boto and fsspec options.
SECRET_NAMES = frozenset(n.lower() for n in (
    "X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token", "Signature", "AWSAccessKeyId",
    "X-Goog-Signature", "X-Goog-Credential", "GoogleAccessId", "sig", "token", "access_token", "id_token",
    "refresh_token", "session_token", "security_token", "password", "passwd", "pwd", "secret", "secret_key",
    "client_secret", "api_key", "apikey", "key_secret", "aws_secret_access_key", "aws_session_token",
    "aws_access_key_id", "Policy", "Key-Pair-Id", "x-oss-signature", "OSSAccessKeyId"))

# scheme://userinfo@host: the userinfo is everything up to the last '@' before the host's end.
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s'\"<>`]*)")
# name=value inside a query string or free text (value up to &, whitespace, quote or ;).
_PAIR = re.compile(r"(?P<name>[A-Za-z][A-Za-z0-9_\-]*)(?P<sep>=)(?P<value>[^&\s'\"<>;,)\]}]+)")
# "name": "value" (JSON) and 'name': 'value' (a Python dict's repr).
_QUOTED = re.compile(r"(?P<q>[\"'])(?P<name>[A-Za-z][A-Za-z0-9_\-]*)(?P=q)(?P<sep>\s*:\s*)(?P<vq>[\"'])"
                     r"(?P<value>(?:\\.|(?!(?P=vq)).)*)(?P=vq)")


def _secret(name: str) -> bool:
    return name.lower() in SECRET_NAMES


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret query values replaced by ``***``.

    ``https://u:p@host/x?X-Amz-Signature=abc&a=1`` -> ``https://***@host/x?X-Amz-Signature=***&a=1``.
    Text that is not a URL is returned with only its secret ``name=value`` pairs redacted.
    """
    return redact(str(url))


def _url_sub(m: re.Match) -> str:
    rest = m.group("rest")
    end = len(rest)
    for stop in "/?#":
        i = rest.find(stop)
        if i >= 0:
            end = min(end, i)
    authority = rest[:end]
    if "@" in authority:
        authority = REDACTED + authority[authority.rindex("@"):]
    return m.group("scheme") + authority + rest[end:]


def _pair_sub(m: re.Match) -> str:
    if not _secret(m.group("name")):
        return m.group(0)
    return m.group("name") + m.group("sep") + REDACTED


def _quoted_sub(m: re.Match) -> str:
    if not _secret(m.group("name")):
        return m.group(0)
    return f"{m.group('q')}{m.group('name')}{m.group('q')}{m.group('sep')}{m.group('vq')}{REDACTED}{m.group('vq')}"


def redact(text: str) -> str:
    """``text`` with every secret in it replaced by ``***`` (see the module docstring)."""
    text = str(text)
    if "://" in text:
        text = _URL.sub(_url_sub, text)
    if "=" in text:
        text = _PAIR.sub(_pair_sub, text)
    if ":" in text and ("'" in text or '"' in text):
        text = _QUOTED.sub(_quoted_sub, text)
    return text


# C0 controls but \t and \n, DEL, C1 controls, and the bidirectional formatting characters.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_CONTROL_NL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(text: str, newlines: bool = True) -> str:
    """``text`` with terminal control characters shown as escapes (``\\x1b``, ``\\u202e``).

    Args:
        text: what is to be printed.
        newlines: keep ``\\n`` and ``\\t`` as they are (default); False escapes them too,
            for a value that must stay on one line (a class name, a key, a path).
    """
    text = str(text)
    return (_CONTROL if newlines else _CONTROL_NL).sub(_escape, text)


def safe(text: str, newlines: bool = True) -> str:
    """:func:`printable` of :func:`redact`: what every printed line goes through."""
    return printable(redact(text), newlines)


def safe_json(text: str) -> str:
    """:func:`safe` for JSON text: secrets redacted, and the control characters that
    ``json.dumps(..., ensure_ascii=False)`` leaves as they are (C1, DEL, the bidirectional
    overrides; it escapes C0 itself) written as ``\\uXXXX``, which keeps the text valid JSON."""
    return _CONTROL.sub(lambda m: f"\\u{ord(m.group(0)):04x}", redact(text))
