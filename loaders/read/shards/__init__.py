"""A shard's bytes, checked against the manifest before any sample of it is yielded.

:mod:`~loaders.read.shards.opening` picks the way in (:func:`~loaders.read.shards.opening.open_shard`):
a local file, the verified copy in ``cache_dir`` or a remote object; :mod:`~loaders.read.shards.verified`
checks size, xxh64 and sample count (:mod:`~loaders.read.shards.tarcount`) first, holding
a remote shard in a :mod:`~loaders.read.shards.spool`; :mod:`~loaders.read.shards.sources`
streams local files and remote objects (ranged reads with retries,
:mod:`~loaders.read.shards.ranged`); :mod:`~loaders.read.shards.cache` keeps verified copies.

Imports only :mod:`loaders.errors`, :mod:`loaders.read.args` and shardgen's format,
storage, retry and redact: nothing of the samples above it.
"""
