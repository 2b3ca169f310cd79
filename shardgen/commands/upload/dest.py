"""The destination of an upload: its filesystem and the few operations upload needs.

On a local destination every file is written under a temporary name (``.tmp-<random>-<name>``,
:func:`~shardgen.storage.io.write_via_temporary`) and renamed, so nothing under a final name is
ever partial. On S3 a shard's xxh64 travels as user metadata in the same request as its bytes.
"""

from __future__ import annotations

import re
from typing import Any

from ...errors import UsageError
from ...format import TMP_PREFIX, stream_xxh64
from ...retry import is_unreachable
from ...storage import S3_PROTOCOLS, filesystem, s3_endpoint, storage_options_for
from ...storage.io import write_via_temporary
from ...storage.protocols import capabilities, protocols_of
from ...storage.scrub import Scrubber, display_url, short
from ...storage.transport import endpoint_of, storage_failure

__all__ = ["Dest", "BLOCK", "S3_PART", "META_KEY", "TMP_RE"]

#: Bytes per read when hashing (local and read-back).
BLOCK = 8 << 20
#: Multipart part size on S3 (progress moves per part; S3's minimum is 5 MiB).
S3_PART = 16 << 20
#: The user-metadata key holding a shard's xxh64 on S3 (header ``x-amz-meta-xxh64``).
META_KEY = "xxh64"
#: Names of the temporary files of a local destination (the format's temporary prefix).
TMP_RE = re.compile("^" + re.escape(TMP_PREFIX))
class Dest:
    """The destination filesystem.

    Args:
        dest: the destination URL or folder.
        storage_options: fsspec options (already parsed).
        endpoint_url: the S3 endpoint given explicitly (beats ``storage_options`` and
            the environment, see :func:`shardgen.storage.storage_options_for`).
        scrub: removes secrets from messages.

    Raises:
        UsageError: ``endpoint_url`` with a destination that is not ``s3://``; an
            ``s3://`` URL without a bucket; the protocol is not installed.
    """

    def __init__(self, dest: str, storage_options: dict[str, Any] | None, endpoint_url: str | None,
                 scrub: Scrubber):
        self.url = dest
        self.scrub = scrub
        opts = storage_options_for(dest, storage_options, endpoint_url)
        self.endpoint = s3_endpoint(opts)
        self.fs, path = filesystem(dest, opts)
        self.protocols = protocols_of(self.fs)
        caps = capabilities(self.fs)
        self.local, self.folders = caps.local, caps.folders
        self.s3 = bool(self.protocols & set(S3_PROTOCOLS))
        self.root = path.rstrip("/") if path not in ("/", "") else path
        if self.s3 and not self.root.split("/")[0]:
            raise UsageError(f"{display_url(dest)}: no bucket in the URL (expected s3://bucket/prefix)")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    # -- preflight -------------------------------------------------------------------
    def fail(self, e: BaseException, doing: str) -> UsageError:
        """A one-line UsageError for a destination that cannot be used: the build's rules and
        wording (:func:`shardgen.storage.transport.storage_failure`), secrets scrubbed."""
        bucket = self.root.split("/")[0]
        msg = storage_failure(e, self.url, doing, self.endpoint, missing=(
            f"bucket {bucket!r} does not exist (at {self.endpoint or 'AWS'}); create it first" if self.s3 else None))
        return UsageError(self.scrub(msg or f"{display_url(self.url)}: cannot use the destination while {doing} "
                                            f"({short(e)})"))

    def unreachable_endpoint(self, e: BaseException) -> str | None:
        """The endpoint (for a message) if ``e`` says it could not be reached, else None."""
        return endpoint_of(e, self.endpoint) if is_unreachable(e) else None

    def listing(self) -> dict[str, int]:
        """``{relpath: size}`` of every object under the destination (raises UsageError)."""
        try:
            self.fs.invalidate_cache()
            if self.local and not self.fs.exists(self.root):
                return {}
            found = self.fs.find(self.root, detail=True)
        except Exception as e:  # noqa: BLE001 - every failure here is a one-line usage error
            raise self.fail(e, "listing it") from None
        prefix = self.root + "/" if self.root else ""
        out: dict[str, int] = {}
        for name, info in found.items():
            name = name.rstrip("/")
            if info.get("type") == "directory" or not name.startswith(prefix):
                continue
            out[name[len(prefix):]] = int(info.get("size") or 0)
        return out

    # -- objects ---------------------------------------------------------------------
    def size(self, rel: str) -> int | None:
        """The object's size from a fresh stat/``HEAD`` (None: not there)."""
        p = self.path(rel)
        self.fs.invalidate_cache(p)
        try:
            info = self.fs.info(p)
        except FileNotFoundError:
            return None
        return int(info.get("size") or 0)

    def stored_digest(self, rel: str) -> str | None:
        """The xxh64 stored with the object (S3 user metadata), or None."""
        if not self.s3:
            return None
        try:
            meta = self.fs.metadata(self.path(rel))
        except FileNotFoundError:
            return None
        v = {str(k).lower(): v for k, v in (meta or {}).items()}.get(META_KEY)
        return str(v).lower() if v else None

    def digest(self, rel: str) -> tuple[str, int]:
        """(xxh64, size) of the object, by reading it back."""
        kw = {"cache_type": "none", "block_size": BLOCK} if self.s3 else {}
        with self.fs.open(self.path(rel), "rb", **kw) as f:
            return stream_xxh64(f, BLOCK)

    def read(self, rel: str, cap: int | None = None) -> bytes | None:
        """The object's bytes, at most ``cap`` of them (None: not there)."""
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                return f.read() if cap is None else f.read(cap)
        except FileNotFoundError:
            return None

    def put_file(self, lpath: str, rel: str, digest: str | None, callback) -> None:
        """Send the local file ``lpath`` as ``rel`` (on S3 with ``digest`` as metadata)."""
        if self.local:
            write_via_temporary(self.fs, self.path(rel), lambda tmp: self.fs.put_file(lpath, tmp, callback=callback))
            return
        kw: dict[str, Any] = {}
        if self.s3:
            kw["chunksize"] = S3_PART
            if digest:
                kw["Metadata"] = {META_KEY: digest}
        self._make_parent(rel)
        self.fs.put_file(lpath, self.path(rel), callback=callback, **kw)

    def put_bytes(self, data: bytes, rel: str) -> None:
        """Write ``data`` as ``rel``."""
        if self.local:
            write_via_temporary(self.fs, self.path(rel), lambda tmp: self.fs.pipe_file(tmp, data))
            return
        self._make_parent(rel)
        self.fs.pipe_file(self.path(rel), data)

    def remove(self, rel: str) -> None:
        """Delete ``rel`` (nothing if it is not there)."""
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(self.path(rel))

    # -- helpers ---------------------------------------------------------------------
    def _make_parent(self, rel: str) -> None:
        """Create the parent folder where the filesystem has real folders."""
        if self.folders:
            self.fs.makedirs(self.fs._parent(self.path(rel)), exist_ok=True)

