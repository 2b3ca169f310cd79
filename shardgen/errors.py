"""Exception types shared by the library and the CLI.

Library code raises these; only the CLI turns them into a one-line message
and an exit code.
"""

__all__ = ["ShardgenError", "UsageError", "BuildFailed", "InvalidBuild", "TransportError", "AccessDenied"]


class ShardgenError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(ShardgenError):
    """A user mistake in arguments or inputs (bad path, bad ratio, ...): exit code 2."""

    exit_code = 2


class BuildFailed(ShardgenError):
    """The build ran but must report failure (e.g. ``--strict`` with skipped files)."""

    exit_code = 1


class InvalidBuild(ShardgenError):
    """A build that breaks the format's rules (``format.validate``): a manifest field, a
    ``dataset.json`` or a file larger than its cap. Exit code 1: the build is at fault,
    not the command line; the message names the build, the field and the (escaped) value."""

    exit_code = 1


class TransportError(UsageError):
    """The storage holding a build could not be reached or broke off: connection refused,
    a host name that does not resolve, a failed TLS handshake, a dropped connection, an
    HTTP 5xx answer, no answer within the timeout. Exit code 1: neither the build nor the
    command line is at fault. A :class:`UsageError` subclass, so that callers that caught
    the unreadable-manifest ``UsageError`` (a timeout) still catch it. The message names
    the URL, redacted."""

    exit_code = 1


class AccessDenied(UsageError):
    """The storage refused the credentials (HTTP 401/403, S3 ``AccessDenied``,
    ``InvalidAccessKeyId``, ``SignatureDoesNotMatch``) or a local file's permissions
    forbid reading it. Exit code 2, as for ``upload``: the user's settings are at fault."""
