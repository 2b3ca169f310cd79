"""``shardgen upload``: publish a finished local build to object storage (or any fsspec URL).

Order of work, chosen so that a reader never sees a manifest that lists a shard that is
missing or differs from it:

1. **Local check.** OUT must be a finished build (``manifest.json`` present, no build in
   progress). Every shard's size and xxh64 are recomputed and compared with the
   manifest, and the other files the manifest relies on must exist; a damaged build
   is refused before anything is sent.
2. **Destination check.** One listing of the destination prefix. It proves that the
   endpoint answers, the credentials work and the bucket exists (each a one-line
   error, exit code 2, otherwise), and says which objects are already there and whose
   they are (:mod:`.guard`): a *different* ``manifest.json``, another build's
   unfinished upload, or files that are not a shardgen build are refused unless
   ``overwrite``. Unless the destination holds this very manifest, the marker
   ``.shardgen-upload.json`` (this manifest's xxh64) is written first, so that a re-run
   knows the unfinished upload as its own. With ``overwrite`` over another build, its
   manifest and then its per-split indexes are deleted before any shard is replaced,
   so readers see no build rather than a mixed one.
3. **Shards**, ``workers`` at a time (threads). A shard whose object is already there
   with the right size and xxh64 is skipped. Otherwise it is sent, then checked: its
   size from a fresh ``HEAD``/stat and its xxh64 computed by **reading the object
   back**. On S3 the digest is also stored as user metadata (``x-amz-meta-xxh64``) in
   the same request as the bytes, so a re-run decides "already there" from a ``HEAD``
   (size + metadata) instead of downloading; objects without that metadata (written by
   another tool, or a store without user metadata such as ``file://``) are read back
   and hashed. Transient errors are retried with exponential backoff
   (:mod:`shardgen.retry`); a mismatch after upload deletes the object and sends it again.
4. Shard objects of the listed splits that the manifest does not list (left by an
   earlier, larger build) are deleted, then ``classes.json``, each
   ``<split>/dataset.json``, ``skipped.jsonl``, ``duplicates.jsonl`` are written (each
   read back and compared), and ``manifest.json`` **last**; then the marker is deleted.

On a local destination every file is written under a temporary name and renamed, so
nothing under a final name is ever partial. Credentials and endpoint come from the
usual places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
``~/.aws`` files), ``endpoint_url`` or ``storage_options`` (explicit settings beat the
environment: :func:`shardgen.storage.storage_options_for`); they are never printed
(messages are scrubbed of secret values) and nothing but the build's own files is
written.

Modules: :mod:`.local` (the build on this disk), :mod:`.dest` (the destination),
:mod:`.guard` (whose files are at the destination),
:mod:`.run` (the steps above), :mod:`.result` (what happened); secrets are kept out of
messages by :mod:`shardgen.storage.scrub`.
"""

from .result import UploadFailed, UploadInterrupted, UploadResult, format_upload
from .run import upload

__all__ = ["UploadResult", "UploadFailed", "UploadInterrupted", "upload", "format_upload"]
