"""Entry point: ``python -m shardgen ...`` and the ``shardgen`` console script.

The command line is checked against the commands' signatures first
(:func:`shardgen.cli.argv.check_argv`): a misspelled flag or a stray argument is one
line on stderr and exit 2 before anything runs. Then python-fire runs it.

A reader that closes the pipe early (``shardgen info OUT | head -1``) ends the command
quietly with exit status 141, what a shell reports for a program killed by SIGPIPE
(``set -o pipefail`` sees it as for ``cat`` or ``seq``); stdout is pointed at
``/dev/null`` so that the interpreter's final flush raises nothing either.
"""

from __future__ import annotations

import os
import sys

#: exit status after the reader of stdout went away: 128 + SIGPIPE, as shells report it
BROKEN_PIPE_EXIT = 141


def main(argv: list[str] | None = None) -> None:
    """Check ``argv`` (default: ``sys.argv[1:]``), then run it through fire."""
    import fire

    from .cli import CLI
    from .cli.argv import ArgvError, check_argv
    from .redact import safe

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            command = check_argv(CLI, args)
        except ArgvError as e:
            where = f"shardgen {e.command}" if e.command else "shardgen"
            print(safe(f"{where}: error: {e}"), file=sys.stderr)
            raise SystemExit(e.exit_code) from None
        fire.Fire(CLI, command=command, name="shardgen")
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise SystemExit(BROKEN_PIPE_EXIT) from None


if __name__ == "__main__":
    main()
