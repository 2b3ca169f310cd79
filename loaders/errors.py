"""Errors raised by the loaders.

Both derive from :mod:`shardgen.errors`, so a script can catch ``ShardgenError``
for anything shardgen raises. A :class:`LoaderError` message always names the shard
(and the sample key where there is one).
"""

from __future__ import annotations

from shardgen.errors import ShardgenError, UsageError

__all__ = ["LoaderError", "UsageError"]


class LoaderError(ShardgenError):
    """Bad data or an unreadable shard while loading (corrupt member, wrong image size,
    label out of range, a stream that stayed broken after all retries)."""

    exit_code = 1
