"""Where this process sits in a (possibly) distributed job.

Rank and world size come from :mod:`torch.distributed` when a process group is
initialised, else from the variables ``torchrun`` sets (``RANK``, ``WORLD_SIZE``),
else the process is alone (rank 0 of 1). Nobody passes a node splitter.
"""

from __future__ import annotations

import os

from .errors import UsageError

__all__ = ["world"]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} is not an integer") from None


def world() -> tuple[int, int]:
    """Return ``(rank, world_size)`` of this process.

    Order of precedence: an initialised ``torch.distributed`` process group; the
    ``RANK`` and ``WORLD_SIZE`` environment variables (set by ``torchrun``); else
    ``(0, 1)``.

    Raises:
        UsageError: only one of ``RANK``/``WORLD_SIZE`` is set, or they are not
            integers with ``0 <= RANK < WORLD_SIZE``.
    """
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    rank, size = _env_int("RANK"), _env_int("WORLD_SIZE")
    if rank is None and size is None:
        return 0, 1
    if rank is None or size is None:
        missing = "RANK" if rank is None else "WORLD_SIZE"
        raise UsageError(f"{missing} is not set although {'WORLD_SIZE' if rank is None else 'RANK'} is; "
                         "launch with torchrun or set both")
    if size < 1 or not 0 <= rank < size:
        raise UsageError(f"RANK={rank} WORLD_SIZE={size}: need 0 <= RANK < WORLD_SIZE")
    return rank, size
