"""Where a build's jobs run: :mod:`.pool`, the local process pool fed a window of jobs at a
time, or a Dask cluster (``--scheduler``): :mod:`.dask` (the pool interface over a Dask
client), :mod:`.dask_setup` (the client's connection and a ``local:N`` cluster),
:mod:`.dask_start` (started while SRC is scanned) and :mod:`.dask_tasks` (what workers run).

An engine runs any picklable callable on jobs and knows nothing of what a job does: the build
(:mod:`shardgen.build`) hands it the tasks, and names the modules a worker should import early.
"""
