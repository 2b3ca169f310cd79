"""What a build may claim: the checks applied to everything read from a build before it is used.

A build may come from someone else (a bucket, an ``https://`` mirror, a folder another
user wrote), so its ``manifest.json``, its ``dataset.json`` files and the tar members of
its shards are untrusted input. Every reader (the commands and the loaders) goes through
:mod:`shardgen.format`, and this module holds the rules they apply, in one place
(``docs/security.md`` lists them):

- **keys** follow the key rule (:func:`key_problem`): 1 to :data:`MAX_KEY` characters of
  ``[A-Za-z0-9_-]``, so a key never holds ``/``, ``\\``, ``..``, NUL or a control character
  and can be used as a file name;
- **checksums** (``xxh64``, ``pixels_xxh64``) are exactly 16 lowercase hex digits;
- **shard paths** are ``<split>/<name>.tar`` with ``name`` of ``[A-Za-z0-9_.-]`` not starting
  with a dot (so no ``%2e%2e`` or any other escape decodes to something else), each listed once;
- **member and image extensions** come from fixed allow-lists (:data:`MEMBER_EXTS`,
  :data:`IMAGE_EXTS`, :data:`IMAGE_MODES`);
- **sizes and counts** stay within bounds that follow from each other: a shard of B bytes
  holds at most ``B // MIN_SAMPLE_BYTES`` samples, no member is larger than its shard or
  than :func:`member_limit` allows for the image size, a build holds at most
  :data:`MAX_SAMPLES` samples and :data:`MAX_CLASSES` classes;
- **class names** are 1 to :data:`MAX_CLASS_NAME_BYTES` bytes without control characters;
- **files** read whole are capped: ``manifest.json`` at :data:`MAX_MANIFEST_BYTES`,
  ``<split>/dataset.json`` at :data:`MAX_DATASET_JSON_BYTES` (:func:`read_capped`).

Values quoted in messages are escaped (:func:`shown`), so a hostile value never reaches a
terminal as it is.
"""

from __future__ import annotations

import re
from typing import Any

from .keys import MAX_KEY
from .names import KEY_RE

__all__ = ["MAX_MANIFEST_BYTES", "MAX_DATASET_JSON_BYTES", "MAX_SAMPLES", "MAX_CLASSES", "MAX_CLASS_NAME_BYTES",
           "MIN_SAMPLE_BYTES", "MAX_IMAGE_SIZE", "IMAGE_EXTS", "IMAGE_MODES", "MEMBER_EXTS", "HEX16_RE",
           "SHARD_NAME_RE", "FileTooLarge", "shown", "key_problem", "member_name_problem", "is_hex16",
           "shard_path_problem", "class_name_problem", "member_limit", "read_capped"]

#: Largest ``manifest.json`` read, in bytes (256 MiB: a build of 10^8 samples needs about 15 MB).
MAX_MANIFEST_BYTES = 256 << 20
#: Largest ``<split>/dataset.json`` read, in bytes (1 GiB: about 20 million samples).
MAX_DATASET_JSON_BYTES = 1 << 30
#: Most samples a build may list (10^8; a build that large cannot be made in 24 GB either).
MAX_SAMPLES = 100_000_000
#: Most classes a build may list.
MAX_CLASSES = 100_000
#: Longest class name, in UTF-8 bytes (one file-system name component).
MAX_CLASS_NAME_BYTES = 255
#: Fewest bytes a sample takes in a shard: two members of at least one header block and one data block.
MIN_SAMPLE_BYTES = 1024
#: Largest image side a build may declare, in pixels (``--size`` allows 8 to 16384).
MAX_IMAGE_SIZE = 16384
#: The image member extensions a build may declare (``image.ext``).
IMAGE_EXTS = ("png",)
#: The image modes a build may declare (``image.mode``).
IMAGE_MODES = ("L",)
#: Every member extension a shardgen shard may hold.
MEMBER_EXTS = ("png", "cls", "json", "labels.npy")
HEX16_RE = re.compile(r"^[0-9a-f]{16}$")
#: The file name of a shard inside its split folder.
SHARD_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,200}\.tar$")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


class FileTooLarge(ValueError):
    """A file read whole is larger than its cap."""


def shown(value: Any, limit: int = 80) -> str:
    """``value`` quoted for a message: its ``repr`` with control characters escaped, cut to
    ``limit`` characters (``...`` marks a cut)."""
    text = ascii(value) if isinstance(value, str) else repr(value)
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def key_problem(key: Any) -> str | None:
    """Why ``key`` breaks the key rule (None when it is a valid key)."""
    if not isinstance(key, str) or not key:
        return f"key {shown(key)} is empty or not text"
    if len(key) > MAX_KEY:
        return f"key {shown(key)} is longer than {MAX_KEY} characters"
    if not KEY_RE.match(key):
        return f"key {shown(key)} has characters outside [A-Za-z0-9_-]"
    return None


def member_name_problem(name: str) -> str | None:
    """Why a tar member name is not ``<key>.<ext>`` with a valid key and an allowed
    extension (None when it is)."""
    key, dot, ext = name.partition(".")
    if not dot:
        return f"member {shown(name)}: name has no extension"
    bad = key_problem(key)
    if bad:
        return f"member {shown(name)}: {bad}"
    if ext not in MEMBER_EXTS:
        return f"member {shown(name)}: extension .{shown(ext)[1:-1]} is not one of {', '.join(MEMBER_EXTS)}"
    return None


def is_hex16(value: Any) -> bool:
    """``value`` is exactly 16 lowercase hex digits (an xxh64 digest as the format writes it)."""
    return isinstance(value, str) and HEX16_RE.match(value) is not None


def shard_path_problem(path: Any, split: str) -> str | None:
    """Why ``path`` is not a safe shard path of ``split`` (None when it is ``<split>/<name>.tar``)."""
    if not isinstance(path, str):
        return f"path {shown(path)} is not text"
    folder, slash, name = path.partition("/")
    if not slash or folder != split or not SHARD_NAME_RE.match(name):
        return (f"path {shown(path)} is not {split}/<name>.tar with a name of letters, digits, '_', '-' and '.' "
                "(inside the build, no escapes)")
    return None


def class_name_problem(name: Any) -> str | None:
    """Why ``name`` cannot be a class name (None when it can)."""
    if not isinstance(name, str) or not name:
        return f"class name {shown(name)} is empty or not text"
    if _CONTROL.search(name):
        return f"class name {shown(name)} holds control characters"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_CLASS_NAME_BYTES:
        return f"class name {shown(name)} is longer than {MAX_CLASS_NAME_BYTES} bytes"
    return None


def member_limit(image_size: int) -> int:
    """Largest tar member a build of ``image_size`` x ``image_size`` images may hold, in bytes:
    a PNG of that many 8-bit pixels stored without compression (a filter byte per row, the
    deflate blocks' framing), plus 1 MiB for the ``.json`` and any ancillary chunks."""
    raw = image_size * (image_size + 1)
    return raw + raw // 1000 + (1 << 20)


def read_capped(f, cap: int, what: str) -> bytes:
    """Read file object ``f`` to its end, but at most ``cap`` bytes.

    Raises:
        FileTooLarge: ``f`` holds more than ``cap`` bytes (nothing more than ``cap + 1`` is read).
    """
    parts, n = [], 0
    while n <= cap:
        piece = f.read(cap + 1 - n)
        if not piece:
            break
        parts.append(piece)
        n += len(piece)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if len(data) > cap:
        raise FileTooLarge(f"{what} is larger than {cap >> 20} MiB, the most shardgen reads")
    return data
