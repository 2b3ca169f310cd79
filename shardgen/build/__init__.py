"""``shardgen build``: labelled images -> deterministic, checksummed WebDataset shards.

:mod:`.run` orchestrates a build; each phase has its module: :mod:`.config` (the frozen,
validated :class:`~.config.BuildConfig`), :mod:`.resolve` (SRC scanned, classes and splits
settled), :mod:`.store` (OUT, a folder or a URL: the one interface the run and both tasks use,
over :mod:`.outdir` and :mod:`.remote_out`, OUT's state), :mod:`.lock` and :mod:`.lease` (one
writer per OUT), :mod:`.convert` (sources -> scratch PNGs, resumable; the sources read through
:mod:`shardgen.sources.files`), :mod:`.split` and :mod:`.mlsplit` (samples -> splits),
:mod:`.plan` (the shard layout), :mod:`.assemble` (scratch -> shards) and :mod:`.finish`
(metadata files, ``manifest.json`` last).

The build reads SRC through :mod:`shardgen.sources`, runs its jobs on :mod:`shardgen.engines`
and writes through :mod:`shardgen.format`; only the CLI and the commands import it.
"""

from typing import Any

__all__ = ["build", "BuildConfig", "BuildResult", "BuildInterrupted", "parse_splits"]


def __getattr__(name: str) -> Any:
    """``shardgen.build.build`` and its companions, the public import path, imported on first
    use: the lock rules the commands take from this package do not pull in the whole build."""
    if name in __all__:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
