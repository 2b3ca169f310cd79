"""``shardgen upload``: publish a finished local build to object storage (or any fsspec URL).

Order of work, chosen so that a reader never sees a manifest that lists a shard that is
missing or differs from it:

1. **Local check.** OUT must be a finished build (``manifest.json`` present, no build in
   progress). Every shard's size and xxh64 are recomputed and compared with the
   manifest, and the other files the manifest relies on must exist; a damaged build
   is refused before anything is sent.
2. **Destination check.** One listing of the destination prefix. It proves that the
   endpoint answers, the credentials work and the bucket exists (each a one-line
   error, exit code 2, otherwise), and says which objects are already there.
   A destination that holds a *different* ``manifest.json`` is refused unless
   ``overwrite``; with ``overwrite`` that manifest is deleted first, so readers see
   no build rather than a mixed one while the shards are replaced.
3. **Shards**, ``workers`` at a time (threads). A shard whose object is already there
   with the right size and xxh64 is skipped. Otherwise it is sent, then checked: its
   size from a fresh ``HEAD``/stat and its xxh64 computed by **reading the object
   back**. On S3 the digest is also stored as user metadata (``x-amz-meta-xxh64``) in
   the same request as the bytes, so a re-run decides "already there" from a ``HEAD``
   (size + metadata) instead of downloading; objects without that metadata (written by
   another tool, or a store without user metadata such as ``file://``) are read back
   and hashed. Transient errors are retried with exponential backoff; a mismatch after
   upload deletes the object and sends it again.
4. Shard objects of the listed splits that the manifest does not list (left by an
   earlier, larger build) are deleted, then ``classes.json``, each
   ``<split>/dataset.json``, ``skipped.jsonl``, ``duplicates.jsonl`` are written (each
   read back and compared), and ``manifest.json`` **last**.

On a local destination every file is written under a temporary name and renamed, so
nothing under a final name is ever partial. Credentials and endpoint come from the
usual places (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
``~/.aws`` files), ``endpoint_url`` or ``storage_options``; they are never printed
(messages are scrubbed of secret values) and nothing but the build's own files is
written.
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
import urllib.parse
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable


from .errors import ShardgenError, UsageError
from .format import CLASSES, DATASET_CARD, DATASET_JSON, DUPLICATES, MANIFEST, SKIPPED, WORK_DIR, wids_index_name
from .storage import filesystem, open_build
from .format import file_xxh64, stream_xxh64

__all__ = ["UploadResult", "UploadFailed", "UploadInterrupted", "upload", "format_upload", "display_url"]

#: Bytes per read when hashing (local and read-back).
BLOCK = 8 << 20
#: Multipart part size on S3 (progress moves per part; S3's minimum is 5 MiB).
S3_PART = 16 << 20
#: The user-metadata key holding a shard's xxh64 on S3 (header ``x-amz-meta-xxh64``).
META_KEY = "xxh64"
_COUNT_LOCK = threading.Lock()
_TMP_RE = re.compile(r"^\.tmp-\d+-\d+-.+\.part$")
_OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "abfs", "abfss", "az", "adl", "oss", "r2"}


class UploadFailed(ShardgenError):
    """The upload stopped part-way (a transfer kept failing); a re-run resumes. Exit code 1."""

    exit_code = 1


class UploadInterrupted(ShardgenError):
    """Ctrl-C: stopped between shards; a re-run resumes. Exit code 130."""

    exit_code = 130


class _Mismatch(Exception):
    """The object read back does not match the local shard (retried: sent again)."""


@dataclass
class UploadResult:
    """What :func:`upload` did.

    Attributes:
        dest: the destination as shown (no credentials).
        shards: shards in the manifest.
        sent, skipped: shards uploaded now / already there with the right size and xxh64.
        bytes_sent, bytes_skipped: their sizes.
        files_written, files_unchanged: the other files (manifest included).
        stale_removed: unlisted shard objects of an earlier build that were deleted.
        retries: transfer attempts that were retried.
        seconds: wall time.
    """

    out: str
    dest: str
    shards: int = 0
    sent: int = 0
    skipped: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0
    files_written: int = 0
    files_unchanged: int = 0
    stale_removed: int = 0
    retries: int = 0
    replaced_manifest: bool = False
    seconds: float = 0.0
    sent_paths: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- secrets

_SECRET_OPT = re.compile(r"(secret|token|password|passwd|key|credential|sas|signature)", re.I)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")


def _secret_values(storage_options: dict[str, Any] | None) -> list[str]:
    vals = [os.environ.get(k, "") for k in _SECRET_ENV]

    def walk(d: Any) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                if isinstance(v, (dict, list, tuple)):
                    walk(v)
                elif isinstance(v, str) and _SECRET_OPT.search(str(k)):
                    vals.append(v)
        elif isinstance(d, (list, tuple)):
            for v in d:
                walk(v)

    walk(storage_options or {})
    return sorted({v for v in vals if v and len(v) >= 4}, key=len, reverse=True)


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` part."""
    try:
        p = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if p.username or p.password:
        host = p.hostname or ""
        if p.port:
            host += f":{p.port}"
        return urllib.parse.urlunsplit((p.scheme, host, p.path, p.query, p.fragment))
    return url


class _Scrubber:
    def __init__(self, storage_options: dict[str, Any] | None):
        self.secrets = _secret_values(storage_options)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return re.sub(r"(https?://)[^/@\s]+@", r"\1", text)


# ----------------------------------------------------------------------------- errors

def _botocore_error(e: BaseException, name: str) -> bool:
    return any(c.__name__ == name for c in type(e).__mro__)


def _is_permanent(e: BaseException) -> bool:
    """Errors a retry cannot fix: access, missing bucket/object, bad arguments."""
    if isinstance(e, (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                      UsageError, ValueError, TypeError, KeyError, ImportError)):
        return True
    return _botocore_error(e, "NoCredentialsError") or _botocore_error(e, "PartialCredentialsError") \
        or _botocore_error(e, "ParamValidationError") or _botocore_error(e, "NoRegionError")


def _is_unreachable(e: BaseException) -> bool:
    return (_botocore_error(e, "EndpointConnectionError") or _botocore_error(e, "ConnectTimeoutError")
            or _botocore_error(e, "ProxyConnectionError") or isinstance(e, ConnectionRefusedError)
            or (_botocore_error(e, "ClientConnectorError")))


def _endpoint_of(e: BaseException, fallback: str | None) -> str:
    url = getattr(e, "kwargs", {}).get("endpoint_url") if hasattr(e, "kwargs") else None
    if url:
        p = urllib.parse.urlsplit(url)
        return display_url(urllib.parse.urlunsplit((p.scheme, p.netloc, "", "", "")))
    return fallback or "the storage endpoint"


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# ----------------------------------------------------------------------------- destination

class _Dest:
    """The destination filesystem and the few operations upload needs."""

    def __init__(self, dest: str, storage_options: dict[str, Any] | None, endpoint_url: str | None,
                 scrub: _Scrubber):
        import fsspec

        self.url = dest
        self.scrub = scrub
        protocol = fsspec.utils.get_protocol(dest)
        opts = dict(storage_options or {})
        if endpoint_url:
            if protocol not in ("s3", "s3a"):
                raise UsageError(f"--endpoint_url applies to s3:// destinations, not {protocol}://")
            ck = dict(opts.get("client_kwargs") or {})
            ck["endpoint_url"] = endpoint_url
            opts["client_kwargs"] = ck
        self.endpoint = endpoint_url or (opts.get("client_kwargs") or {}).get("endpoint_url") \
            or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.fs, path = filesystem(dest, opts)
        protos = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self.protocols = set(protos)
        self.local = bool(self.protocols & {"file", "local"})
        self.s3 = bool(self.protocols & {"s3", "s3a"})
        self.object_store = bool(self.protocols & _OBJECT_STORES)
        self.root = path.rstrip("/") if path not in ("/", "") else path
        if self.s3 and not self.root.split("/")[0]:
            raise UsageError(f"{display_url(dest)}: no bucket in the URL (expected s3://bucket/prefix)")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root else rel

    # -- preflight -------------------------------------------------------------------
    def fail(self, e: BaseException, doing: str) -> UsageError:
        """A one-line UsageError for a destination that cannot be used."""
        where = display_url(self.url)
        if _is_unreachable(e):
            return UsageError(self.scrub(f"{where}: cannot reach {_endpoint_of(e, self.endpoint)} "
                                         f"while {doing} (is the endpoint URL right and the server up?)"))
        if _botocore_error(e, "NoCredentialsError") or _botocore_error(e, "PartialCredentialsError"):
            return UsageError(f"{where}: no credentials found; set AWS_ACCESS_KEY_ID and "
                              f"AWS_SECRET_ACCESS_KEY (or a profile in ~/.aws) or pass --storage_options")
        if isinstance(e, PermissionError):
            return UsageError(self.scrub(
                f"{where}: access denied while {doing} ({str(e).strip() or 'Forbidden'}); check the "
                f"credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE) and the bucket's permissions"))
        if isinstance(e, FileNotFoundError) and self.s3:
            bucket = self.root.split("/")[0]
            return UsageError(self.scrub(f"{where}: bucket {bucket!r} does not exist "
                                         f"(at {self.endpoint or 'AWS'}); create it first"))
        if isinstance(e, FileNotFoundError):
            return UsageError(self.scrub(f"{where}: not found while {doing} ({e})"))
        return UsageError(self.scrub(f"{where}: cannot use the destination while {doing} ({_short(e)})"))

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

    def read(self, rel: str) -> bytes | None:
        try:
            with self.fs.open(self.path(rel), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _tmp(self, rel: str) -> str:
        d, _, base = rel.rpartition("/")
        name = f".tmp-{os.getpid()}-{threading.get_ident()}-{base}.part"
        return f"{d}/{name}" if d else name

    def put_file(self, lpath: str, rel: str, digest: str | None, callback) -> None:
        if self.local:
            dst = self.path(rel)
            self.fs.makedirs(self.fs._parent(dst), exist_ok=True)
            tmp = self.path(self._tmp(rel))
            try:
                self.fs.put_file(lpath, tmp, callback=callback)
                self.fs.mv(tmp, dst)
            finally:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            return
        kw: dict[str, Any] = {}
        if self.s3:
            kw["chunksize"] = S3_PART
            if digest:
                kw["Metadata"] = {META_KEY: digest}
        elif not self.object_store:
            self.fs.makedirs(self.fs._parent(self.path(rel)), exist_ok=True)
        self.fs.put_file(lpath, self.path(rel), callback=callback, **kw)

    def put_bytes(self, data: bytes, rel: str) -> None:
        if self.local:
            dst = self.path(rel)
            self.fs.makedirs(self.fs._parent(dst), exist_ok=True)
            tmp = self.path(self._tmp(rel))
            try:
                self.fs.pipe_file(tmp, data)
                self.fs.mv(tmp, dst)
            finally:
                if self.fs.exists(tmp):
                    self.fs.rm(tmp)
            return
        if not self.object_store:
            self.fs.makedirs(self.fs._parent(self.path(rel)), exist_ok=True)
        self.fs.pipe_file(self.path(rel), data)

    def remove(self, rel: str) -> None:
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(self.path(rel))


# ----------------------------------------------------------------------------- progress

class _Bytes:
    """An fsspec callback that moves a shared tqdm bar and can take its bytes back."""

    def __init__(self, bar, lock: threading.Lock):
        import fsspec.callbacks

        outer = self

        class CB(fsspec.callbacks.Callback):
            def call(self, *args, **kwargs):  # noqa: D401 - fsspec hook
                return None

            def relative_update(self, inc=1):
                outer.add(int(inc))

        self.bar, self.lock, self.done = bar, lock, 0
        self.callback = CB()

    def add(self, n: int) -> None:
        if n:
            with self.lock:
                self.done += n
                self.bar.update(n)

    def settle(self, total: int) -> None:
        """The transfer finished: count what the backend did not report."""
        self.add(total - self.done)

    def undo(self) -> None:
        self.add(-self.done)


def _note(msg: str) -> None:
    """A one-line note on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                disable=not enabled, dynamic_ncols=True, leave=False, mininterval=0.5)


# ----------------------------------------------------------------------------- local build

@dataclass
class _Shard:
    rel: str
    local: str
    bytes: int
    xxh64: str


def _local_build(out: str) -> tuple[str, dict[str, Any], bytes, list[_Shard], list[str]]:
    """Open and check the local build: (folder, manifest, manifest bytes, shards, other files)."""
    src = str(out)
    if src.startswith("file://"):
        src = src[len("file://"):]
    if "://" in src:
        raise UsageError(f"OUT must be a local build folder, not a URL ({display_url(src)})")
    if src.endswith(MANIFEST):
        src = os.path.dirname(src) or "."
    if not os.path.isdir(src):
        raise UsageError(f"OUT {src} is not a folder")
    if not os.path.isfile(os.path.join(src, MANIFEST)):
        hint = " (a build is in progress or was interrupted; finish it first)" \
            if os.path.isdir(os.path.join(src, WORK_DIR)) else ""
        raise UsageError(f"OUT {src} is not a finished shardgen build: no {MANIFEST}{hint}")
    if os.path.isdir(os.path.join(src, WORK_DIR)):
        raise UsageError(f"OUT {src} holds a build in progress or an interrupted one ({WORK_DIR}/); "
                         f"finish it with shardgen build before uploading")
    build = open_build(os.path.abspath(src))
    with open(os.path.join(src, MANIFEST), "rb") as f:
        manifest_bytes = f.read()
    shards: list[_Shard] = []
    for split, s in build.manifest["splits"].items():
        for sh in s["shards"]:
            rel = str(sh["path"])
            if rel.startswith("/") or ".." in rel.split("/") or "\\" in rel:
                raise UsageError(f"OUT {src}: manifest lists an unsafe shard path {rel!r}")
            shards.append(_Shard(rel, os.path.join(src, *rel.split("/")), int(sh["bytes"]), str(sh["xxh64"]).lower()))
    files = [CLASSES] + [f"{sp}/{DATASET_JSON}" for sp in build.manifest["splits"]]
    missing = [f for f in files if not os.path.isfile(os.path.join(src, *f.split("/")))]
    if missing:
        raise UsageError(f"OUT {src} is not a complete build: missing {', '.join(missing[:3])}")
    # Optional: builds made before these files existed lack them.
    readers = [f"{sp}/{wids_index_name(sp)}" for sp in build.manifest["splits"]] + [DATASET_CARD]
    for opt in [SKIPPED, DUPLICATES] + readers:
        if os.path.isfile(os.path.join(src, *opt.split("/"))):
            files.append(opt)
    return src, build.manifest, manifest_bytes, shards, files


def verify_local(src: str, shards: list[_Shard], workers: int, progress: bool) -> None:
    """Sizes and xxh64 of the local shards against the manifest.

    Raises:
        UsageError: a shard is missing, has another size or another xxh64 (nothing is sent).
    """
    bad: list[str] = []
    lock = threading.Lock()
    with _bar(sum(s.bytes for s in shards), "check local", progress) as bar:
        def one(s: _Shard) -> None:
            try:
                size = os.path.getsize(s.local)
            except OSError:
                with lock:
                    bad.append(f"{s.rel} is missing")
                return
            if size != s.bytes:
                with lock:
                    bad.append(f"{s.rel} is {size} bytes, the manifest says {s.bytes}")
                return
            digest, n = file_xxh64(s.local, BLOCK)
            with lock:
                bar.update(n)
                if digest != s.xxh64:
                    bad.append(f"{s.rel} has xxh64 {digest}, the manifest says {s.xxh64}")

        with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1, len(shards) or 1))) as ex:
            list(ex.map(one, shards))
    if bad:
        bad.sort()
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UsageError(f"OUT {src} does not match its manifest: {bad[0]}{more}; nothing was uploaded "
                         f"(run shardgen verify {src}, then rebuild)")


# ----------------------------------------------------------------------------- upload

def _parse_options(storage_options: Any) -> dict[str, Any] | None:
    if storage_options is None or isinstance(storage_options, dict):
        return storage_options
    import json

    try:
        v = json.loads(str(storage_options))
    except ValueError:
        raise UsageError("--storage_options: expected a JSON object like '{\"profile\": \"x\"}'") from None
    if not isinstance(v, dict):
        raise UsageError("--storage_options: expected a JSON object")
    return v


def upload(out: str, dest: str, *, endpoint_url: str | None = None, workers: int = 8,
           storage_options: dict[str, Any] | str | None = None, overwrite: bool = False,
           progress: bool = True, retries: int = 5, backoff: float = 1.0,
           log: Callable[[str], None] | None = None) -> UploadResult:
    """Upload the finished build in ``out`` to ``dest`` (``s3://bucket/prefix``, any fsspec URL, a folder).

    Args:
        out: local build folder (or its ``manifest.json``).
        dest: where the build goes; its files keep their relative paths under it.
        endpoint_url: S3 endpoint (e.g. ``http://127.0.0.1:8333``); default from
            ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` or AWS itself.
        workers: shards in flight at once (threads).
        storage_options: extra fsspec options (dict or JSON text), e.g. ``{"profile": "x"}``.
        overwrite: replace a different build already at ``dest``.
        progress: progress bars (bytes) on stderr.
        retries: further attempts after a transient error, per operation.
        backoff: first wait in seconds; doubles per attempt (capped at 30 s, with jitter).
        log: where one-line notes go (retries, replaced manifest); default stderr.

    Raises:
        UsageError: OUT is not a finished, intact build; the destination cannot be used
            (unreachable endpoint, bad credentials, missing bucket); a different build is
            there without ``overwrite`` (exit code 2).
        UploadFailed: a transfer kept failing after all retries (exit code 1; re-run to resume).
    """
    t0 = time.monotonic()
    opts = _parse_options(storage_options)
    scrub = _Scrubber(opts)
    note = log or _note
    workers = max(1, int(workers))
    src, manifest, manifest_bytes, shards, files = _local_build(out)
    result = UploadResult(out=src, dest=display_url(str(dest)), shards=len(shards))

    # Cheap destination checks first (endpoint, credentials, bucket, a different build there),
    # then the local shards' checksums, then the transfers.
    d = _Dest(str(dest), opts, endpoint_url, scrub)
    existing = d.listing()

    # A different build already there: never let its readers see our shards under its manifest.
    replace = False
    if MANIFEST in existing:
        old = _call(lambda: d.read(MANIFEST), retries, backoff, d, MANIFEST, note, result, scrub)
        if old is not None and old != manifest_bytes:
            if not overwrite:
                raise UsageError(f"{result.dest} already holds a different build ({MANIFEST} differs); "
                                 f"pass --overwrite to replace it")
            replace = True

    verify_local(src, shards, workers, progress)

    if replace:  # readers now see no build (a clear error) until the new manifest lands
        _call(lambda: d.remove(MANIFEST), retries, backoff, d, MANIFEST, note, result, scrub)
        existing.pop(MANIFEST, None)
        result.replaced_manifest = True
        note(f"shardgen upload: removed the old {MANIFEST} at {result.dest} before replacing its build")

    lock = threading.Lock()
    todo_bytes = sum(s.bytes for s in shards if existing.get(s.rel) != s.bytes)
    stop = threading.Event()

    with _bar(todo_bytes, "upload", progress) as bar:
        def sync(s: _Shard) -> None:
            if stop.is_set():
                return
            if existing.get(s.rel) == s.bytes and _call(lambda: _matches(d, s), retries, backoff, d, s.rel,
                                                         note, result, scrub):
                with lock:
                    result.skipped += 1
                    result.bytes_skipped += s.bytes
                return
            if existing.get(s.rel) == s.bytes:  # same size but different bytes: not in the bar's total yet
                with lock:
                    bar.total += s.bytes
                    bar.refresh()
            _call(lambda: _send(d, s, bar, lock), retries, backoff, d, s.rel, note, result, scrub)
            with lock:
                result.sent += 1
                result.bytes_sent += s.bytes
                result.sent_paths.append(s.rel)

        ex = ThreadPoolExecutor(max_workers=min(workers, len(shards) or 1), thread_name_prefix="upload")
        try:
            futures = [ex.submit(sync, s) for s in shards]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for f in futures:
                if f.done() and f.exception() is not None:
                    stop.set()
                    for g in futures:
                        g.cancel()
                    raise f.exception()
        except KeyboardInterrupt:
            stop.set()
            ex.shutdown(wait=False, cancel_futures=True)
            raise UploadInterrupted(
                f"interrupted; {MANIFEST} was not written, so readers see no new build; re-run the same "
                f"command to resume (shards already there are skipped)"
            ) from None
        except BaseException:
            stop.set()
            ex.shutdown(wait=True, cancel_futures=True)
            raise
        ex.shutdown(wait=True)
    result.sent_paths.sort()

    # Shards of the listed splits that the manifest does not list: left by an earlier build.
    listed = {s.rel for s in shards}
    for split in manifest["splits"]:
        pat = re.compile(rf"^{re.escape(split)}/{re.escape(split)}-\d{{6}}\.tar$")
        for rel in sorted(existing):
            if pat.match(rel) and rel not in listed:
                _call(lambda rel=rel: d.remove(rel), retries, backoff, d, rel, note, result, scrub)
                result.stale_removed += 1

    # Temporary files of a killed run into a local folder.
    for rel in sorted(existing):
        if d.local and _TMP_RE.match(rel.rsplit("/", 1)[-1]):
            _call(lambda rel=rel: d.remove(rel), retries, backoff, d, rel, note, result, scrub)

    # The small files, then the manifest last.
    for rel in files + [MANIFEST]:
        if rel == MANIFEST:
            data = manifest_bytes
        else:
            with open(os.path.join(src, *rel.split("/")), "rb") as f:
                data = f.read()
        changed = _call(lambda: _put_small(d, rel, data, rel in existing), retries, backoff, d, rel,
                        note, result, scrub)
        if changed:
            result.files_written += 1
        else:
            result.files_unchanged += 1
    result.seconds = time.monotonic() - t0
    return result


def _matches(d: _Dest, s: _Shard) -> bool:
    """Is the object already there the same as the local shard (size checked by the caller)?"""
    try:
        stored = d.stored_digest(s.rel)
        if stored is not None:
            return stored == s.xxh64
        digest, n = d.digest(s.rel)
    except FileNotFoundError:  # gone since the listing
        return False
    return digest == s.xxh64 and n == s.bytes


def _send(d: _Dest, s: _Shard, bar, lock) -> None:
    cb = _Bytes(bar, lock)
    try:
        d.put_file(s.local, s.rel, s.xxh64, cb.callback)
        cb.settle(s.bytes)
        size = d.size(s.rel)
        if size != s.bytes:
            raise _Mismatch(f"{s.rel}: the stored object is {size} bytes after upload, expected {s.bytes}")
        digest, n = d.digest(s.rel)
        if digest != s.xxh64 or n != s.bytes:
            raise _Mismatch(f"{s.rel}: the stored object reads back with xxh64 {digest}, expected {s.xxh64}")
    except BaseException as e:
        cb.undo()
        if isinstance(e, _Mismatch):
            try:
                d.remove(s.rel)
            except Exception:  # noqa: BLE001 - the next attempt overwrites it anyway
                pass
        raise


def _put_small(d: _Dest, rel: str, data: bytes, exists: bool) -> bool:
    """Write a small file unless identical bytes are there; read back to confirm. True if written."""
    if exists and d.read(rel) == data:
        return False
    d.put_bytes(data, rel)
    d.fs.invalidate_cache(d.path(rel))
    back = d.read(rel)
    if back != data:
        raise _Mismatch(f"{rel}: reads back different from what was written")
    return True


def _call(fn: Callable[[], Any], retries: int, backoff: float, d: _Dest, what: str,
          note: Callable[[str], None], result: UploadResult, scrub: _Scrubber) -> Any:
    """Run ``fn`` with retries and exponential backoff on transient errors."""
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if _is_permanent(e):
                raise d.fail(e, f"transferring {what}") from None
            if attempt >= retries:
                if _is_unreachable(e):
                    raise UploadFailed(scrub(
                        f"{what}: cannot reach {_endpoint_of(e, d.endpoint)} after {attempt + 1} attempts; "
                        f"re-run the same command to resume (finished shards are skipped)")) from None
                raise UploadFailed(scrub(
                    f"{what}: {_short(e)} (after {attempt + 1} attempts); re-run the same command to "
                    f"resume (finished shards are skipped)")) from None
            wait_s = min(30.0, backoff * (2 ** attempt)) * (0.5 + random.random() / 2)
            attempt += 1
            with _COUNT_LOCK:
                result.retries += 1
            note(scrub(f"shardgen upload: {what}: {_short(e)}; retry {attempt}/{retries} in {wait_s:.1f} s"))
            time.sleep(wait_s)


def format_upload(r: UploadResult) -> str:
    """The summary the CLI prints."""
    from .report import human_bytes

    lines = [f"uploaded {r.out} -> {r.dest}",
             f"shards: {r.shards} ({r.sent} sent, {r.skipped} skipped: already there with the right size and xxh64), "
             f"{human_bytes(r.bytes_sent)} sent in {r.seconds:.1f} s"
             + (f" ({human_bytes(r.bytes_sent / r.seconds)}/s)" if r.seconds > 0 and r.bytes_sent else "")]
    extra = f"files: {r.files_written} written, {r.files_unchanged} unchanged; {MANIFEST} last"
    if r.stale_removed:
        extra += f"; removed {r.stale_removed} stale shard(s) of an earlier build"
    if r.retries:
        extra += f"; {r.retries} retried operation(s)"
    lines.append(extra)
    return "\n".join(lines)
