"""Locate a build (local folder, ``manifest.json`` path, or any fsspec URL) and read it.

Everything that reads a finished build (loaders, verify, info, preview, stylegan)
goes through :func:`open_build`, so local paths, ``s3://`` and ``http(s)://`` behave
the same. Credentials and endpoints come from the usual places (environment,
AWS config files) or from ``storage_options``; nothing here writes them anywhere.
This module is the one place that parses ``--storage_options`` and settles the S3
endpoint (:func:`storage_options_for` documents the order: explicit settings first,
then the environment) and gives every remote request a connect and a read timeout
(:func:`timeout_options`), so that a server that accepts connections but never
answers ends in an error, never in a hang.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ..errors import AccessDenied, InvalidBuild, TransportError, UsageError
from ..format import DATASET_JSON, MANIFEST, Manifest, ManifestError, ShardReadError, SplitEntry, parse_dataset_json
from ..format.validate import MAX_DATASET_JSON_BYTES, MAX_MANIFEST_BYTES, FileTooLarge, read_capped
from ..redact import redact
from .protocols import HTTP_PROTOCOLS, S3_PROTOCOLS
from .transport import open_guarded

__all__ = ["Build", "open_build", "split_url", "is_url", "filesystem", "parse_storage_options",
           "storage_options_for", "s3_endpoint", "DEFAULT_TIMEOUT_S",
           "S3FS_RETRIES", "timeout_options", "check_timeout", "read_dataset_json"]


def is_url(path: str) -> bool:
    """True for ``scheme://...`` paths other than ``file://``."""
    return "://" in str(path) and not str(path).startswith("file://")


def split_url(source: str) -> tuple[str, str]:
    """Split ``source`` into (root, manifest name): accepts the folder or its manifest."""
    s = str(source)
    if s.endswith(".json"):
        root, name = s.rsplit("/", 1) if "/" in s else (".", s)
        return root, name
    return s.rstrip("/") or "/", MANIFEST


#: Default connect and read timeout of every remote request, in seconds.
DEFAULT_TIMEOUT_S = 30.0
#: Tries of one S3 call inside s3fs when shardgen sets the timeouts (s3fs's own default is 5;
#: botocore's retries are switched off, so one call takes at most this many timeouts).
S3FS_RETRIES = 2
_JSON_HINT = "expected a JSON object like '{\"profile\": \"lab\"}'"


def parse_storage_options(value: Any, flag: str = "--storage_options") -> dict[str, Any] | None:
    """fsspec options given as a dict or as JSON text (what the CLI receives).

    Raises:
        UsageError: the text is not JSON, or not a JSON object.
    """
    if value is None or isinstance(value, dict):
        return value
    try:
        parsed = json.loads(str(value))
    except ValueError:
        raise UsageError(f"{flag}: {_JSON_HINT}") from None
    if not isinstance(parsed, dict):
        raise UsageError(f"{flag}: {_JSON_HINT}")
    return parsed


def storage_options_for(url: str, storage_options: dict[str, Any] | None = None,
                        endpoint_url: str | None = None) -> dict[str, Any]:
    """The fsspec options for ``url``, with the S3 endpoint settled.

    For ``s3://`` the endpoint is, first found wins: ``endpoint_url``; then
    ``storage_options["client_kwargs"]["endpoint_url"]``; then
    ``storage_options["endpoint_url"]``; then the environment, ``AWS_ENDPOINT_URL_S3``
    and ``AWS_ENDPOINT_URL``; else AWS itself. What is given explicitly always beats
    the environment. The result names it once, as ``client_kwargs["endpoint_url"]``.

    Raises:
        UsageError: ``endpoint_url`` for a URL that is not ``s3://``.
    """
    protocol = fsspec.utils.get_protocol(str(url))
    opts = dict(storage_options or {})
    if protocol not in S3_PROTOCOLS:
        if endpoint_url:
            raise UsageError(f"--endpoint_url applies to s3:// destinations, not {protocol}://")
        return opts
    client = dict(opts.get("client_kwargs") or {})
    endpoint = (endpoint_url or client.get("endpoint_url") or opts.pop("endpoint_url", None)
                or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"))
    opts.pop("endpoint_url", None)
    if endpoint:
        client["endpoint_url"] = endpoint
        opts["client_kwargs"] = client
    return opts


def check_timeout(value: Any, flag: str = "timeout") -> float | None:
    """``value`` as a timeout in seconds (a positive number) or None.

    Raises:
        UsageError: not a positive number.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UsageError(f"{flag} must be a positive number of seconds, got {value!r}")
    return float(value)


def timeout_options(url: str, storage_options: dict[str, Any] | None, timeout: float | None) -> dict[str, Any]:
    """``storage_options`` with a connect and a read timeout of ``timeout`` seconds added.

    For ``http(s)://`` (aiohttp): ``client_kwargs["timeout"] = aiohttp.ClientTimeout(
    sock_connect=timeout, sock_read=timeout)`` (no limit on a whole transfer, which may be
    large; only on waiting). For ``s3://``: ``config_kwargs`` ``connect_timeout`` and
    ``read_timeout`` of ``timeout`` and ``retries={"max_attempts": 0}`` (no botocore
    retries; :func:`filesystem` also caps s3fs's own tries at :data:`S3FS_RETRIES`), so
    that the callers' one retry policy (:mod:`shardgen.retry`) bounds the total.
    Precedence: whatever ``storage_options`` sets explicitly (``client_kwargs["timeout"]``;
    each of the three ``config_kwargs`` keys) wins over these defaults. Other protocols,
    and ``timeout=None``, are left as they are.
    """
    opts = dict(storage_options or {})
    if timeout is None:
        return opts
    protocol = fsspec.utils.get_protocol(str(url))
    if protocol in HTTP_PROTOCOLS:
        import aiohttp

        client = dict(opts.get("client_kwargs") or {})
        client.setdefault("timeout", aiohttp.ClientTimeout(total=None, sock_connect=timeout, sock_read=timeout))
        opts["client_kwargs"] = client
    elif protocol in S3_PROTOCOLS:
        config = dict(opts.get("config_kwargs") or {})
        config.setdefault("connect_timeout", timeout)
        config.setdefault("read_timeout", timeout)
        config.setdefault("retries", {"max_attempts": 0})
        opts["config_kwargs"] = config
    return opts


def s3_endpoint(options: dict[str, Any]) -> str | None:
    """The endpoint that options from :func:`storage_options_for` name (None: AWS, or not S3)."""
    return (options.get("client_kwargs") or {}).get("endpoint_url")


def filesystem(url: str, storage_options: dict[str, Any] | None = None, endpoint_url: str | None = None,
               timeout: float | None = DEFAULT_TIMEOUT_S):
    """Return ``(fs, path)`` for ``url``; see :func:`storage_options_for` for the S3 endpoint.

    Every request of the filesystem has a connect and a read timeout of ``timeout``
    seconds (default 30; None: the fsspec backend's own), unless ``storage_options``
    sets them (:func:`timeout_options`).

    Raises:
        UsageError: ``endpoint_url`` for a URL that is not ``s3://``; the protocol's
            fsspec backend is not installed.
    """
    protocol = fsspec.utils.get_protocol(str(url))
    opts = timeout_options(url, storage_options_for(url, storage_options, endpoint_url), timeout)
    try:
        fs, path = fsspec.core.url_to_fs(str(url), **opts)
    except ImportError as e:
        raise UsageError(f"{url}: support for {protocol}:// is not installed ({e}); try: pip install 'shardgen[s3]'") from None
    if timeout is not None and protocol in S3_PROTOCOLS and isinstance(getattr(fs, "retries", None), int):
        fs.retries = min(fs.retries, S3FS_RETRIES)  # s3fs's own retry loop, read per call
    _keep(fs)
    return fs, path


#: The network filesystems this process opened, kept for its whole life (see _keep).
_KEPT: dict[int, Any] = {}


def _keep(fs: Any) -> None:
    """Hold a reference to a network filesystem for the life of the process.

    fsspec empties its instance cache in a forked child (a DataLoader or verify worker).
    A filesystem referenced only by that cache then becomes garbage in the child, and
    collecting it there runs its session finaliser, which closes the inherited
    connections and so unregisters the parent's pooled sockets from the epoll instance
    both processes share: the parent's next request on them hangs (aiohttp's 5-minute
    timeout). Held here, it stays reachable in every forked child, which never closes it.
    """
    if not isinstance(fs, LocalFileSystem):
        _KEPT.setdefault(id(fs), fs)


@dataclass
class Build:
    """A finished build, opened for reading.

    Attributes:
        root: the build folder (URL or local path) as given.
        fs: the fsspec filesystem holding it.
        path: ``root`` as ``fs`` names it.
        manifest: the typed, validated ``manifest.json``.
        storage_options: the fsspec options it was opened with.
        timeout: the connect and read timeout of its requests, in seconds (named in errors).
    """

    root: str
    fs: Any
    path: str
    manifest: Manifest
    storage_options: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = DEFAULT_TIMEOUT_S

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def splits(self) -> list[str]:
        return list(self.manifest.splits)

    def join(self, relpath: str) -> str:
        """Filesystem path of ``relpath`` inside the build."""
        return self.path.rstrip("/") + "/" + relpath

    def url(self, relpath: str) -> str:
        """Full URL (or local path) of ``relpath`` inside the build."""
        return self.root.rstrip("/") + "/" + relpath

    def open(self, relpath: str, mode: str = "rb"):
        """Open file ``relpath`` of the build (``rb``: guarded as :meth:`open_shard` is).

        Raises:
            TransportError, AccessDenied: see :func:`~.transport.storage_error`.
            OSError: missing or unreadable for another reason.
        """
        if mode != "rb":
            return self.fs.open(self.join(relpath), mode)
        return open_guarded(self.fs, self.join(relpath), self.url(relpath), self.timeout)

    def open_shard(self, relpath: str):
        """Open shard ``relpath`` for streaming (1 MiB blocks). A transport failure or refusal,
        opening or reading, is a one-line :class:`~shardgen.errors.TransportError` or
        :class:`~shardgen.errors.AccessDenied` naming the shard's URL (:func:`~.transport.storage_error`):
        not the shard's fault, so never reported as a damaged shard.

        Raises:
            ShardReadError: missing or unreadable.
            TransportError, AccessDenied: see :func:`~.transport.storage_error`.
        """
        try:
            return open_guarded(self.fs, self.join(relpath), self.url(relpath), self.timeout, block_size=1 << 20)
        except FileNotFoundError:
            raise ShardReadError("missing: listed in manifest.json but not found") from None
        except (OSError, ValueError) as e:
            raise ShardReadError(f"cannot open: {e}") from None

    def split(self, name: str) -> SplitEntry:
        """The manifest's entry of split ``name``.

        Raises:
            UsageError: no such split.
        """
        try:
            return self.manifest.splits[name]
        except KeyError:
            raise UsageError(
                f"{redact(self.root)}: no split {name!r} (splits: {', '.join(self.splits)})"
            ) from None

    def labels(self, split: str) -> list[tuple[str, int]]:
        """``[(key, class index), ...]`` of ``split`` in shard order, from its ``dataset.json``.

        Raises:
            OSError: unreadable; ValueError: not a valid ``dataset.json``.
        """
        rel = f"{split}/{DATASET_JSON}"
        return read_dataset_json(self.fs, self.join(rel), self.timeout, self.url(rel))


def read_dataset_json(fs: Any, path: str, timeout: float | None = DEFAULT_TIMEOUT_S,
                      url: str | None = None) -> list[tuple[str, Any]]:
    """``[(key, label), ...]`` of the ``dataset.json`` at ``path`` on ``fs``, read at most
    :data:`~shardgen.format.validate.MAX_DATASET_JSON_BYTES`; ``timeout`` (seconds) and
    ``url`` (default ``path``) name the request in a transport error.

    Raises:
        OSError: unreadable; ValueError: too large, or not a valid ``dataset.json``;
        TransportError, AccessDenied: see :func:`~.transport.storage_error`.
    """
    with open_guarded(fs, path, url or path, timeout) as f:
        return parse_dataset_json(read_capped(f, MAX_DATASET_JSON_BYTES, path.rsplit("/", 2)[-2] + "/" + DATASET_JSON))


def _read_manifest(fs: Any, mpath: str, url: str, timeout: float | None) -> bytes:
    """The manifest's bytes.

    Raises:
        UsageError: missing, or unreadable for a reason of its own.
        TransportError, AccessDenied: see :func:`~.transport.storage_error`.
        InvalidBuild: larger than ``MAX_MANIFEST_BYTES``.
    """
    try:
        with open_guarded(fs, mpath, url, timeout) as f:
            return read_capped(f, MAX_MANIFEST_BYTES, url)
    except FileTooLarge as e:
        raise InvalidBuild(str(e)) from None
    except (TransportError, AccessDenied):
        raise
    except FileNotFoundError:
        root, name = url.rsplit("/", 1)
        raise UsageError(f"{redact(root)}: no {name} here; is this a finished shardgen build?") from None
    except PermissionError as e:  # a local file (remote refusals are AccessDenied above)
        raise AccessDenied(f"{url}: permission denied ({e.strerror or e})") from None
    except OSError as e:
        raise UsageError(f"{redact(url)}: cannot read ({redact(str(e))})") from None
    except Exception as e:  # a transport raised something no rule above knows: still one line
        if not is_url(url):
            raise
        raise TransportError(f"{redact(url)}: cannot read ({type(e).__name__}: {redact(str(e))[:200]})") from None


def open_build(source: str, storage_options: dict[str, Any] | None = None,
               timeout: float | None = DEFAULT_TIMEOUT_S) -> Build:
    """Open a build folder, its ``manifest.json``, or a URL of either.

    Args:
        source: the build folder, its manifest, or a URL of either.
        storage_options: fsspec options (explicit timeouts in them win, see :func:`timeout_options`).
        timeout: connect and read timeout of each remote request in seconds (default 30).

    Raises:
        UsageError: the manifest is missing or unreadable.
        TransportError: the storage cannot be reached or broke off (timeout, TLS, DNS, refused
            or dropped connection, HTTP 5xx): one line naming the redacted URL, exit 1.
        AccessDenied: the storage refused the credentials, or a local file's permissions.
        InvalidBuild: the manifest is not JSON, not a valid shardgen manifest
            (``format.validate_manifest``), or larger than ``MAX_MANIFEST_BYTES``.
    """
    source = str(source)
    if source.startswith("file://"):
        source = source[len("file://"):]
    root, name = split_url(source)
    fs, path = filesystem(root, storage_options, timeout=timeout)
    raw = _read_manifest(fs, path.rstrip("/") + "/" + name, f"{root}/{name}", timeout)
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidBuild(f"{root}/{name}: manifest does not parse as JSON ({e})") from None
    try:
        manifest = Manifest.parse(obj)
    except ManifestError as e:
        raise InvalidBuild(f"{root}/{name}: not a valid shardgen manifest: {e.problems[0]}") from None
    return Build(root=root, fs=fs, path=path.rstrip("/") or "/", manifest=manifest,
                 storage_options=dict(storage_options or {}), timeout=timeout)
