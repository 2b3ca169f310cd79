"""loaders: stream shardgen shards into PyTorch training on one or many GPUs.

.. code-block:: python

    from loaders import make_loader, DevicePrefetcher
    loader = make_loader("out/", split="train", batch_size=256, num_workers=4)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for images, labels in DevicePrefetcher(loader, "cuda"):
            ...  # images: bf16 [B,1,S,S] on the GPU, normalised; labels: int64 [B]

Every rank yields exactly ``len(loader)`` batches (rank and world size come from
``torch.distributed`` or torchrun's environment); ``mode="eval"`` yields every sample
exactly once across ranks, padding with label -100. Sources are build folders,
``manifest.json`` files or any fsspec URL (``s3://``, ``http(s)://``), streamed with
retries and an optional size-bounded local cache. See :func:`make_loader`.

One folder per role, each importing only the ones before it: :mod:`loaders.order`
(which sample when, from the manifest alone) -> :mod:`loaders.read` (a shard's bytes ->
decoded samples, in the workers) -> :mod:`loaders.deliver` (samples -> batches in the
main process). :mod:`loaders.loader` (:func:`make_loader`) and :mod:`loaders.stylegan`
put them together; ``errors``, ``dist``, ``transform`` and ``device`` import no folder.
"""

from .deliver.worker import ShardStream
from .device import DevicePrefetcher, to_device
from .dist import world
from .errors import LoaderError, UsageError
from .loader import ShardLoader, make_loader
from .read.targets import PAD_LABEL
from .stylegan import StyleGANShards
from .transform import transform_seed

__all__ = [
    "make_loader",
    "ShardLoader",
    "ShardStream",
    "to_device",
    "DevicePrefetcher",
    "StyleGANShards",
    "LoaderError",
    "UsageError",
    "PAD_LABEL",
    "world",
    "transform_seed",
]
