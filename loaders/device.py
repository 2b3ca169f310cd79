"""Move batches to the accelerator and normalise them there.

The loaders hand over ``uint8`` images (a quarter of the bytes of float32, half of
bf16); conversion and normalisation run on the GPU after a pinned, non-blocking copy.
:class:`DevicePrefetcher` issues the copy of batch ``k+1`` on a side CUDA stream
before handing out batch ``k``, so the copy overlaps the compute of batch ``k``, and
measures how long the training loop waited for data.
"""

from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

import torch

__all__ = ["to_device", "DevicePrefetcher"]


def to_device(batch: Any, device: Any, dtype: torch.dtype = torch.bfloat16, channels_last: bool = True,
              mean: float = 0.5, std: float = 0.5, non_blocking: bool = True) -> tuple:
    """Copy ``(images, labels[, keys])`` to ``device`` and normalise the images there.

    Images become ``dtype`` with values ``(x / 255 - mean) / std`` (default: -1 .. 1),
    in ``channels_last`` memory format when asked (the fast layout for convolutions
    under bf16/fp16). Labels stay ``int64``; keys (if any) stay a list of strings.
    On a CUDA device, unpinned images are pinned first and both copies are
    non-blocking: they are ordered on the current stream, so using the result is safe.

    Args:
        batch: a batch from :func:`loaders.make_loader`.
        device: e.g. ``"cuda"``, ``torch.device("cuda", local_rank)`` or ``"cpu"``.
        dtype: floating dtype of the images (default ``torch.bfloat16``).
        channels_last: return images in ``torch.channels_last`` format (default true).
        mean, std: normalisation applied after scaling to 0..1 (default 0.5, 0.5).
        non_blocking: asynchronous host-to-device copies (default true).

    Returns:
        ``(images, labels)`` or ``(images, labels, keys)`` on ``device``.
    """
    images, labels, *rest = batch
    device = torch.device(device)
    if device.type == "cuda":
        if not images.is_pinned():
            images = images.pin_memory()
        if not labels.is_pinned():
            labels = labels.pin_memory()
    x = images.to(device, non_blocking=non_blocking)
    y = labels.to(device, non_blocking=non_blocking)
    x = x.to(dtype)
    x = x.mul_(1.0 / (255.0 * std)).sub_(mean / std)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x, y, *rest)


class DevicePrefetcher:
    """Iterate a loader with batches already on the device, one batch ahead.

    On CUDA the copy and normalisation of the next batch run on a side stream while
    the current batch is being used; elsewhere it simply calls :func:`to_device`.

    Attributes:
        wait_s: seconds spent waiting for the loader in the current/last epoch.
        batches: batches handed out in the current/last epoch.

    Args:
        loader: any iterable of batches (usually a :class:`loaders.ShardLoader`).
        device: target device.
        **kwargs: passed to :func:`to_device` (dtype, channels_last, mean, std).
    """

    def __init__(self, loader: Iterable, device: Any, **kwargs: Any):
        self.loader = loader
        self.device = torch.device(device)
        self.kwargs = kwargs
        self.wait_s = 0.0
        self.batches = 0
        self._state: Any = None

    def state_dict(self) -> Any:
        """The loader's state as of the batches this prefetcher has handed out (the
        batch it holds ahead is not counted: resuming yields it again)."""
        if self._state is not None:
            return self._state
        return self.loader.state_dict()  # type: ignore[attr-defined]

    def load_state_dict(self, state: Any) -> None:
        self._state = None
        self.loader.load_state_dict(state)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def _next(self, it: Iterator, stream) -> Any:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            return None
        finally:
            self.wait_s += time.perf_counter() - t0
        self._ahead = self.loader.state_dict() if self._stateful else None
        if stream is None:
            return to_device(batch, self.device, **self.kwargs), None
        with torch.cuda.stream(stream):
            out = to_device(batch, self.device, **self.kwargs)
            event = torch.cuda.Event()
            event.record(stream)
        return out, event

    def __iter__(self) -> Iterator:
        self.wait_s, self.batches = 0.0, 0
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(device=self.device) if cuda else None
        self._stateful = hasattr(self.loader, "state_dict")
        self._state = None
        it = iter(self.loader)
        nxt = self._next(it, stream)
        while nxt is not None:
            out, event = nxt
            self._state = self._ahead
            if event is not None:
                current = torch.cuda.current_stream(self.device)
                current.wait_event(event)
                for t in out:
                    if isinstance(t, torch.Tensor):
                        t.record_stream(current)
            nxt = self._next(it, stream)
            self.batches += 1
            yield out
        self._state = None
