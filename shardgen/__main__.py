"""Entry point: ``python -m shardgen ...`` and the ``shardgen`` console script."""

from __future__ import annotations

import sys

import fire

from .cli import CLI


def main(argv: list[str] | None = None) -> None:
    """Run the fire CLI on ``argv`` (default: ``sys.argv[1:]``)."""
    fire.Fire(CLI, command=sys.argv[1:] if argv is None else argv, name="shardgen")


if __name__ == "__main__":
    main()
