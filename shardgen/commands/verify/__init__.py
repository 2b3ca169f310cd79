"""``shardgen verify``: prove that a build is intact, or name every way in which it is not.

Every shard is streamed once, front to back, through fsspec (so a local folder, ``s3://``
and ``http(s)://`` are read the same way), hashed (xxh64) and counted as it passes; each
sample is checked on the way (member set, key, class index, ``.json`` class, PNG chunk
checksums, decoded size and mode, xxh64 of the decoded pixels against the ``.json``'s
``pixels``) and, per shard, ``pixels_xxh64`` is recomputed from the samples' pixel digests
(the decoded ones, or without decoding the ``.json`` ones). Builds made before these
digests existed are checked without them.

Work split: reader threads (at most 4) parse the tar streams and hash them; batches of 32
samples go to ``workers`` processes that decode and check them (PIL's PNG decoder holds
the GIL, so threads would not help). At most ``4 * workers`` batches are in flight, so
memory stays at a few MB whatever the shard size; per sample only its key, class index
and a 16-hex-digit pixel hash are kept for the build-wide checks.

Build-wide checks afterwards: keys unique across the build, no pixel-identical image in
two splits, per-class counts as in the manifest, each ``<split>/dataset.json`` listing
exactly that split's samples in shard order, no unlisted ``.tar`` in a split folder,
``classes.json`` equal to the manifest's classes, ``skipped.jsonl`` as long as the
manifest says, each split's wids index listing the manifest's shards and counts
(:mod:`shardgen.format.companions`; a missing index or ``README.md`` is a note).

Modules: :mod:`.result` (what was found, and the report), :mod:`.samples` (one sample's
checks, run in the decoding processes, and the pool that runs them), :mod:`.shards`
(streaming one shard), :mod:`.buildwide` (the checks across shards, splits and the
build's other files), :mod:`.run` (:func:`verify`: reader threads, progress, collecting).
"""

from __future__ import annotations

from .result import Problem, VerifyResult, format_result
from .run import verify

__all__ = ["Problem", "VerifyResult", "verify", "format_result"]
