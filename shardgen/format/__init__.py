"""The on-disk format of a shardgen build, ``shardgen/1``: the one owner of its rules.

The specification is ``docs/format.md``; this package implements it, and every other
module (build, verify, info, preview, stylegan, export, diff, upload and the loaders)
reads and writes builds through it:

- :mod:`.names`: paths and file names of a build folder;
- :mod:`.manifest`: the typed, validated ``manifest.json`` and ``dataset.json``;
- :mod:`.sample`: the sample schema (member names, ``.cls`` and ``.json`` encodings,
  pixel digests, source paths in JSON);
- :mod:`.keys`: the sample key rule;
- :mod:`.writer` and :mod:`.reader`: the tar writer and the streaming tar reader;
- :mod:`.checksum`: xxh64 of files and streams;
- :mod:`.atomic`: atomic writes.
"""

from .atomic import TMP_PREFIX, atomic_write, atomic_write_bytes, atomic_write_json, dump_json
from .checksum import HashingReader, file_xxh64, stream_xxh64
from .keys import MAX_KEY, make_keys
from .manifest import (MULTILABEL, SINGLE, TASKS, CodecVersions, ImageSpec, Manifest, ManifestError, ShardEntry,
                       SplitEntry, parse_dataset_json, validate_manifest)
from .names import (CLASSES, DATASET_CARD, DATASET_JSON, DUPLICATES, FORMAT, KEY_RE, MANIFEST, OWN_FILES, SKIPPED,
                    SPLIT_RE, WIDS_SUFFIX, WORK_DIR, is_own_split_file, is_own_top, shard_name, shard_relpath,
                    wids_index_name)
from .reader import Member, Sample, ShardReadError, TarReader, find_sample_headers, split_member_name
from .sample import (CLS_EXT, IMAGE_EXT, JSON_EXT, LABELS_EXT, MEMBERS, MULTILABEL_MEMBERS, SampleMeta, LabelError,
                     decode_multihot, encode_cls, encode_multihot, multilabel_members, path_fields, pixels_digest,
                     read_target, sample_members, shard_pixels_xxh64)
from .writer import TAR_MTIME, ShardWriter, tar_header

__all__ = [
    "TMP_PREFIX", "atomic_write", "atomic_write_bytes", "atomic_write_json", "dump_json",
    "HashingReader", "file_xxh64", "stream_xxh64",
    "MAX_KEY", "make_keys",
    "MULTILABEL", "SINGLE", "TASKS", "CodecVersions", "ImageSpec", "Manifest", "ManifestError", "ShardEntry",
    "SplitEntry", "parse_dataset_json", "validate_manifest",
    "CLASSES", "DATASET_CARD", "DATASET_JSON", "DUPLICATES", "FORMAT", "KEY_RE", "MANIFEST", "SKIPPED",
    "SPLIT_RE", "WIDS_SUFFIX", "WORK_DIR", "OWN_FILES", "is_own_split_file", "is_own_top", "shard_name", "shard_relpath",
    "wids_index_name",
    "CLS_EXT", "IMAGE_EXT", "JSON_EXT", "LABELS_EXT", "MEMBERS", "MULTILABEL_MEMBERS", "SampleMeta", "LabelError",
    "decode_multihot", "encode_cls", "encode_multihot", "multilabel_members", "path_fields", "pixels_digest",
    "read_target", "sample_members", "shard_pixels_xxh64",
    "TAR_MTIME", "Member", "Sample", "ShardReadError", "ShardWriter", "TarReader", "find_sample_headers",
    "split_member_name", "tar_header",
]
