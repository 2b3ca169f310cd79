"""Exception types shared by the library and the CLI.

Library code raises these; only the CLI turns them into a one-line message
and an exit code.
"""

__all__ = ["ShardgenError", "UsageError", "BuildFailed", "InvalidBuild"]


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
