"""The targets a loader yields: class indices or multi-hot vectors, from the manifest's task.

A single-label build gives ``int64 [B]`` class indices read from each sample's ``.cls``;
a multi-label build (manifest ``task`` ``"multilabel"``) gives ``float32 [B, C]`` multi-hot
vectors read from ``.labels.npy``. Padding rows (eval's last batch, or samples skipped
with ``on_error="skip"``) are :data:`PAD_LABEL` (-100) in every position: ``cross_entropy``
ignores them by default, and for multi-label losses ``targets[:, 0] != -100`` is the mask
of real samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardgen.format import CLS_EXT, LABELS_EXT, LabelError, read_target

from ..errors import LoaderError

__all__ = ["PAD_LABEL", "Targets"]

#: Label of padding samples: PyTorch's default ``ignore_index`` (``cross_entropy`` skips them).
PAD_LABEL = -100


@dataclass(frozen=True)
class Targets:
    """What a split's targets are (picklable).

    Attributes:
        n_classes: C, the number of classes.
        multilabel: multi-hot vectors (``float32 [B, C]``) instead of indices (``int64 [B]``).
    """

    n_classes: int
    multilabel: bool = False

    @property
    def member(self) -> str:
        """The member extension the target is read from (``cls`` or ``labels.npy``)."""
        return LABELS_EXT if self.multilabel else CLS_EXT

    def empty(self, batch_size: int) -> np.ndarray:
        """A batch's targets, every row padding (:data:`PAD_LABEL`)."""
        if self.multilabel:
            return np.full((batch_size, self.n_classes), PAD_LABEL, dtype=np.float32)
        return np.full(batch_size, PAD_LABEL, dtype=np.int64)

    def parse(self, raw: bytes | None, where: str):
        """One sample's target from its member bytes: an int, or a float32 ``[C]`` vector.

        Raises:
            LoaderError: the member is missing or is not a valid target of this build.
        """
        try:
            target = read_target(raw, self.n_classes, self.multilabel)
        except LabelError as e:
            raise LoaderError(f"{where}: {e}") from None
        if not self.multilabel:
            return target
        vec = np.zeros(self.n_classes, dtype=np.float32)
        vec[list(target)] = 1.0
        return vec
