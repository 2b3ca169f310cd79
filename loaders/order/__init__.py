"""Which sample when: an epoch's order, each (rank, worker) slot's share of it, and the
position of a resumed epoch, all worked out from the manifest's sample counts alone.

Nothing here reads a byte of a shard: the folders form a one-way graph
``order`` -> ``read`` -> ``deliver``, and ``order`` imports neither of the others (of
``loaders`` only :mod:`loaders.errors`). :mod:`~loaders.order.sequence` is an epoch's
positions, :mod:`~loaders.order.plan` a slot's share of them,
:mod:`~loaders.order.shuffle` the seeds and the shuffle buffer's output order, and
:mod:`~loaders.order.resume` the loader's state and the plan of a resumed epoch.
"""
