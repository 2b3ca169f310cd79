"""Per-sample transforms of :func:`loaders.make_loader` (``transform=``), seeded per sample.

A transform is a picklable callable taking one decoded sample, a ``uint8 [1,S,S]``
tensor, and returning a tensor of the same shape and dtype. Before each call the
worker seeds torch's default (CPU) generator from ``(seed, epoch, sample key)``
(:func:`transform_seed`), so a transform drawing from it (``torch.rand``,
``torch.randint``..., as torchvision's ``transforms.v2`` do) makes the same draws for
a sample whatever the run, the worker count or the worker that reads the sample.

In DataLoader workers the generator is the worker's own (the loader's processes);
with ``num_workers=0`` the transform runs in the caller's process, so its generator
state is saved before and restored after each call: the user's RNG is left as it was.
"""

from __future__ import annotations

import multiprocessing
import pickle
from typing import Any, Callable

import numpy as np
import torch
import xxhash

from .errors import LoaderError, UsageError

__all__ = ["SampleTransform", "transform_seed", "check_picklable"]

_MASK = (1 << 63) - 1


def transform_seed(seed: int, epoch: int, key: str) -> int:
    """The seed of torch's default generator before transforming sample ``key``.

    ``xxh64("{seed}\\0{epoch}\\0{key}")`` masked to 63 bits (stable across runs,
    processes and platforms).
    """
    return xxhash.xxh64_intdigest(f"{seed}\0{epoch}\0{key}".encode()) & _MASK


class SampleTransform:
    """Apply a user transform to a decoded sample in its batch slot.

    Args:
        fn: the user's callable (``uint8 [1,S,S]`` tensor -> tensor of that shape and dtype).
        seed: the loader's seed.
        own_process: true in a DataLoader worker (its generator may be reseeded freely);
            false in the user's process (the generator's state is restored after each call).
    """

    def __init__(self, fn: Callable[[torch.Tensor], Any], seed: int, own_process: bool):
        self.fn, self.seed, self.own_process = fn, seed, own_process
        self._gen = torch.default_generator

    def __call__(self, out: np.ndarray, shard: str, key: str, epoch: int) -> None:
        """Transform the sample decoded in ``out`` (a ``[1,S,S]`` uint8 view of its slot) in place.

        The transform gets its own copy of the pixels (it may modify it in place or
        return a view of it); what it returns is copied into ``out``.

        Raises:
            LoaderError: the transform raised, or returned something other than a
                ``uint8`` tensor of the input's shape (names the shard, key and what came back).
        """
        x = torch.from_numpy(out).clone()
        gen = self._gen
        saved = None if self.own_process else gen.get_state()
        try:
            gen.manual_seed(transform_seed(self.seed, epoch, key))
            y = self.fn(x)
        except Exception as e:
            raise LoaderError(f"{shard}: sample {key}: transform raised {type(e).__name__}: {e}") from e
        finally:
            if saved is not None:
                gen.set_state(saved)
        if not isinstance(y, torch.Tensor):
            raise LoaderError(f"{shard}: sample {key}: transform returned {type(y).__name__}, expected a "
                              f"uint8 tensor of shape {list(out.shape)}")
        if tuple(y.shape) != out.shape or y.dtype != torch.uint8:
            raise LoaderError(f"{shard}: sample {key}: transform returned {y.dtype} {list(y.shape)}, expected "
                              f"torch.uint8 {list(out.shape)} (a transform may not change the size or dtype: "
                              f"batches have fixed slots)")
        torch.from_numpy(out).copy_(y)


def check_picklable(transform: Any, ctx: Any, num_workers: int) -> None:
    """A transform must pickle when workers are spawned (fork passes it as it is)."""
    if transform is None or num_workers == 0:
        return
    method = (ctx.get_start_method() if ctx is not None
              else multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0])
    if method == "fork":
        return
    try:
        pickle.dumps(transform)
    except Exception as e:
        raise UsageError(f"transform must be picklable for {method!r} workers (a module-level function or "
                         f"class, not a lambda or a local function): {type(e).__name__}: {e}") from None
