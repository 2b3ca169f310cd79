"""shardgen: deterministic, checksummed WebDataset shards from labelled image collections."""

__version__ = "0.1.0"
__all__ = ["__version__"]
