"""Shards as the dataset of StyleGAN2-ADA's training loop.

StyleGAN2-ADA (``training/dataset.py``) hands its loop ``(image, label)`` pairs:
``uint8`` images in CHW layout and ``float32`` one-hot labels, and the loop asks the
dataset for ``resolution``, ``num_channels``, ``label_dim``, ``has_labels``,
``label_shape``, ``image_shape``, ``name``, ``len()`` and ``get_label(i)``.
:class:`StyleGANShards` provides all of that as an infinite, rank-aware
``IterableDataset``. Because it is iterable, the loop's ``InfiniteSampler`` must go:

.. code-block:: python

    training_set = loaders.StyleGANShards("s3://bucket/xray", split="train", xflip=True)
    training_set_iterator = iter(torch.utils.data.DataLoader(
        training_set, batch_size=batch_size // num_gpus, num_workers=3, pin_memory=True))
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .dist import world
from .errors import LoaderError
from .order.plan import plan_slot
from .order.shuffle import output_order, slot_rng, slot_seed
from .read.args import as_int
from .read.decoded.place import check_decoded_args, plan_split
from .read.samples import SampleReader, slot_samples
from .read.shards.sources import DEFAULT_CHUNK
from .read.spec import open_split

__all__ = ["StyleGANShards"]


class StyleGANShards(IterableDataset):
    """An endless, shuffled stream of ``(image uint8 [1,S,S], one-hot float32 [C])``.

    Each rank (from ``torch.distributed`` or ``RANK``/``WORLD_SIZE``) and each DataLoader
    worker reads its own share of every epoch (as :func:`loaders.make_loader` in train
    mode does, batch size 1), then moves on to the next epoch with a new shard order:
    the stream never ends. With ``xflip`` each image is mirrored left-right with
    probability 1/2 (seeded), StyleGAN2-ADA's ``--mirror``. For a multi-label build the
    label is the sample's multi-hot vector (``float32 [C]``), as StyleGAN2-ADA's own
    dataset gives for vector labels.

    GAN training passes over the same images thousands of times, so by default each
    sample is decoded once per node and every later pass copies its pixels from the
    node-local decoded cache (``make_loader``'s, shared with it and between ranks and
    workers; see ``docs/loaders.md``). The stream (images, labels, flips) is bitwise
    the same with the cache on and off.

    Args:
        source: build folder, ``manifest.json`` or URL (as for ``make_loader``).
        split: split name (default ``train``).
        xflip: random horizontal flips (default false).
        use_labels: one-hot class labels (default true); false gives ``label_dim == 0``.
        seed: seed of shard order, shuffle buffer and flips (default 0).
        shuffle_buffer: samples per worker in the shuffle buffer (default 1000).
        on_error, storage_options, cache_dir, cache_limit, retries: as for ``make_loader``.
        decoded_cache: where decoded samples are kept (default ``"auto"``:
            ``$SHARDGEN_DECODED_CACHE`` if set, a folder or ``off``; else
            ``/dev/shm/shardgen-<user>`` when the decoded split fits, else
            ``~/.cache/shardgen/decoded``); a folder; None or False: off. As for ``make_loader``.
        decoded_cache_limit: most bytes the cache folder holds, all splits together (int or
            ``"8GB"``; default ``"auto"``: half of its file system, within its free space).
            As for ``make_loader``: when the split does not fit, the longest run of its
            shards that fits is cached and the rest is decoded on every pass.
        verify: check each shard's size and xxh64 before any of its samples is yielded
            (default true; ``False`` is unsafe, as for ``make_loader``).

    Raises:
        UsageError: bad arguments (checked before the manifest is read for
            ``decoded_cache`` and ``decoded_cache_limit``), a missing/invalid manifest, an
            unknown or empty split, or a ``decoded_cache`` folder that cannot be written.
    """

    def __init__(self, source: Any, split: str = "train", xflip: bool = False, use_labels: bool = True,
                 seed: int = 0, shuffle_buffer: int = 1000, on_error: str = "raise",
                 storage_options: dict | None = None, cache_dir: str | None = None, cache_limit: Any = "10GB",
                 retries: int = 5, chunk_size: int = DEFAULT_CHUNK, decoded_cache: Any = "auto",
                 decoded_cache_limit: Any = "auto", verify: bool = True):
        check_decoded_args(decoded_cache, decoded_cache_limit)
        self.spec = open_split(source, split, storage_options, on_error, cache_dir, cache_limit, retries,
                               chunk_size, verify=verify)
        self.spec.decoded = plan_split(self.spec, decoded_cache, decoded_cache_limit)
        self.xflip = bool(xflip)
        self.use_labels = bool(use_labels)
        self.seed = as_int(seed, "seed", 0)
        self.shuffle_buffer = as_int(shuffle_buffer, "shuffle_buffer", 0)
        self.rank, self.world_size = world()
        self._labels: Any = None
        self._source = str(source)
        self._storage_options = storage_options

    # -- what StyleGAN2-ADA's Dataset exposes -------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.root.rstrip("/").rsplit("/", 1)[-1] + "-" + self.spec.split

    @property
    def resolution(self) -> int:
        return self.spec.size

    @property
    def num_channels(self) -> int:
        return 1

    @property
    def image_shape(self) -> list[int]:
        return [1, self.spec.size, self.spec.size]

    @property
    def label_dim(self) -> int:
        return len(self.spec.classes) if self.use_labels else 0

    @property
    def label_shape(self) -> list[int]:
        return [self.label_dim]

    @property
    def has_labels(self) -> bool:
        return self.label_dim > 0

    @property
    def has_onehot_labels(self) -> bool:
        return self.has_labels

    def __len__(self) -> int:
        """Samples in the split (doubled with xflip, as StyleGAN2-ADA counts them)."""
        n = sum(s.samples for s in self.spec.shards)
        return n * 2 if self.xflip else n

    def _class_indices(self) -> Any:
        """Class index of every sample in shard order, from ``<split>/dataset.json`` (for a
        multi-label build, its tuple of class indices)."""
        if self._labels is None:
            from shardgen.storage import open_build

            build = open_build(self._source, self._storage_options)
            try:
                labels = [c for _, c in build.labels(self.spec.split)]
                # multi-label: a list of index lists (ragged), used as fancy indices in get_label
                idx = [list(c) for c in labels] if self.spec.multilabel else np.asarray(labels, np.int64)
            except (OSError, ValueError) as e:
                raise LoaderError(f"{build.url(self.spec.split + '/dataset.json')}: cannot read labels: {e}") from None
            self._labels = idx
        return self._labels

    def get_label(self, idx: int) -> np.ndarray:
        """One-hot (multi-hot) label (``float32 [C]``) of sample ``idx`` (shard order; modulo with xflip)."""
        out = np.zeros(self.label_shape, dtype=np.float32)
        if self.has_labels:
            classes = self._class_indices()
            out[classes[int(idx) % len(classes)]] = 1.0
        return out

    # -- the stream -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        spec = self.spec
        reader = SampleReader(spec)
        flip_rng = random.Random(slot_seed(self.seed, self.rank, worker, 2))
        epoch = 0
        while True:
            plan = plan_slot([s.samples for s in spec.shards], 1, self.rank, self.world_size, worker, workers, "train",
                             self.seed, epoch)
            order = output_order(plan.real, self.shuffle_buffer, slot_rng(self.seed, epoch, self.rank, worker, 0))
            for s in slot_samples(reader, plan, order):
                if s is None:  # unreadable, skipped (on_error="skip")
                    continue
                img = np.empty((1, spec.size, spec.size), np.uint8)
                try:
                    label = reader.pixels_into(img[0], s)  # decoded, or copied from the decoded cache
                except LoaderError:
                    if spec.on_error == "raise":
                        raise
                    reader.count_skip()
                    continue
                if self.xflip and flip_rng.random() < 0.5:
                    img = np.ascontiguousarray(img[:, :, ::-1])
                onehot = np.zeros(self.label_shape, dtype=np.float32)
                if self.has_labels:
                    if spec.multilabel:
                        onehot[:] = label
                    else:
                        onehot[label] = 1.0
                yield img, onehot
            epoch += 1
