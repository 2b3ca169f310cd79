"""Bytes -> samples: everything a DataLoader worker does to turn a split's shards into
decoded samples (picklable classes; each process opens its own files and filesystem).

:mod:`~loaders.read.spec` is the split a worker reads (opened from the manifest),
:mod:`~loaders.read.samples` reads a slot's samples and decodes them,
:mod:`~loaders.read.targets` their labels and :mod:`~loaders.read.args` the arguments
as users write them; :mod:`loaders.read.shards` brings a shard's bytes, checked against
the manifest (local, ranged remote reads, the ``cache_dir`` copy), and
:mod:`loaders.read.decoded` is the node-local cache of decoded samples.

Direction: ``order`` -> ``read`` -> ``deliver``. ``read`` may import :mod:`loaders.order`
(a plan's segments say what to read) and never :mod:`loaders.deliver` or the public API
modules; inside it ``args`` and ``targets`` are at the bottom, ``shards`` and ``decoded``
import neither each other nor ``spec``/``samples``, and ``samples`` is on top.
"""
