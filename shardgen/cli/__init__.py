"""The command line: :mod:`.app` is the python-fire layer (one method per command: arguments
converted and checked, one library call, the result printed, errors mapped to exit codes),
:mod:`.argv` checks a command line against the commands' signatures before anything runs.

The top layer of ``shardgen``: nothing below imports it.
"""

from .app import CLI

__all__ = ["CLI"]
