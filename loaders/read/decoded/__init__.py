"""The node-local cache of decoded samples (``make_loader(decoded_cache=...)``): each
sample is decoded once per node and later epochs copy its pixels from a memory-mapped file.

:mod:`~loaders.read.decoded.store` is a process's view of the cache folder (one entry
per shard), :mod:`~loaders.read.decoded.entry` one entry's file (header, samples with
their checksums, the fill protocol), :mod:`~loaders.read.decoded.place` where the cache
goes and how much of a split it holds (chosen when the loader is made), and
:mod:`~loaders.read.private` the checks that the folder is the user's own.

Imports only :mod:`loaders.errors`, :mod:`loaders.read.args` and shardgen's format:
nothing of the samples that use it, nor :mod:`loaders.read.shards`.
"""
