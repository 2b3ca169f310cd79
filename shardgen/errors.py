"""Exception types shared by the library and the CLI.

Library code raises these; only the CLI turns them into a one-line message
and an exit code.
"""

__all__ = ["ShardgenError", "UsageError", "BuildFailed"]


class ShardgenError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(ShardgenError):
    """A user mistake in arguments or inputs (bad path, bad ratio, ...): exit code 2."""

    exit_code = 2


class BuildFailed(ShardgenError):
    """The build ran but must report failure (e.g. ``--strict`` with skipped files)."""

    exit_code = 1
