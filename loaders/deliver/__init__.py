"""Samples -> batches in the main process: each DataLoader worker assembles whole batches
in a shared-memory ring, and the main process takes them out in the canonical order.

:mod:`~loaders.deliver.worker` is :class:`~loaders.deliver.worker.ShardStream`, the
``IterableDataset`` each worker runs (plan, read, decode into a batch slot);
:mod:`~loaders.deliver.ring` the ring and the messages that travel through the
DataLoader; :mod:`~loaders.deliver.delivery` the main process's side (copy out, reorder,
a receiving thread).

Direction: ``order`` -> ``read`` -> ``deliver``. ``deliver`` imports :mod:`loaders.order`
and :mod:`loaders.read` and is imported only by the public API modules
(:mod:`loaders.loader`, :mod:`loaders`); inside it ``delivery`` -> ``worker`` -> ``ring``.
"""
