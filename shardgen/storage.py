"""Locate a build (local folder, ``manifest.json`` path, or any fsspec URL) and read it.

Everything that reads a finished build (loaders, verify, info, preview, stylegan)
goes through :func:`open_build`, so local paths, ``s3://`` and ``http(s)://`` behave
the same. Credentials and endpoints come from the usual places (environment,
AWS config files) or from ``storage_options``; nothing here writes them anywhere.
This module is the one place that parses ``--storage_options`` and settles the S3
endpoint (:func:`storage_options_for` documents the order: explicit settings first,
then the environment).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import UsageError
from .format import DATASET_JSON, MANIFEST, Manifest, ManifestError, ShardReadError, SplitEntry, parse_dataset_json

__all__ = ["Build", "open_build", "split_url", "is_url", "filesystem", "parse_storage_options",
           "storage_options_for", "s3_endpoint", "S3_PROTOCOLS"]


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


#: fsspec protocols that the S3 endpoint settings apply to.
S3_PROTOCOLS = ("s3", "s3a")
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


def s3_endpoint(options: dict[str, Any]) -> str | None:
    """The endpoint that options from :func:`storage_options_for` name (None: AWS, or not S3)."""
    return (options.get("client_kwargs") or {}).get("endpoint_url")


def filesystem(url: str, storage_options: dict[str, Any] | None = None, endpoint_url: str | None = None):
    """Return ``(fs, path)`` for ``url``; see :func:`storage_options_for` for the S3 endpoint.

    Raises:
        UsageError: ``endpoint_url`` for a URL that is not ``s3://``; the protocol's
            fsspec backend is not installed.
    """
    protocol = fsspec.utils.get_protocol(str(url))
    opts = storage_options_for(url, storage_options, endpoint_url)
    try:
        fs, path = fsspec.core.url_to_fs(str(url), **opts)
    except ImportError as e:
        raise UsageError(f"{url}: support for {protocol}:// is not installed ({e}); try: pip install 'shardgen[s3]'") from None
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
    """

    root: str
    fs: Any
    path: str
    manifest: Manifest
    storage_options: dict[str, Any] = field(default_factory=dict)

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
        return self.fs.open(self.join(relpath), mode)

    def open_shard(self, relpath: str):
        """Open shard ``relpath`` for streaming (1 MiB blocks).

        Raises:
            ShardReadError: missing or unreadable.
        """
        try:
            return self.fs.open(self.join(relpath), "rb", block_size=1 << 20)
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
                f"{self.root}: no split {name!r} (splits: {', '.join(self.splits)})"
            ) from None

    def labels(self, split: str) -> list[tuple[str, int]]:
        """``[(key, class index), ...]`` of ``split`` in shard order, from its ``dataset.json``.

        Raises:
            OSError: unreadable; ValueError: not a valid ``dataset.json``.
        """
        with self.open(f"{split}/{DATASET_JSON}") as f:
            return parse_dataset_json(f.read())


def open_build(source: str, storage_options: dict[str, Any] | None = None) -> Build:
    """Open a build folder, its ``manifest.json``, or a URL of either.

    Raises:
        UsageError: the manifest is missing, unreadable, not JSON or not a shardgen manifest.
    """
    source = str(source)
    if source.startswith("file://"):
        source = source[len("file://"):]
    root, name = split_url(source)
    fs, path = filesystem(root, storage_options)
    mpath = path.rstrip("/") + "/" + name
    try:
        with fs.open(mpath, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise UsageError(f"{root}: no {name} here; is this a finished shardgen build?") from None
    except PermissionError as e:
        raise UsageError(f"{root}/{name}: permission denied ({e})") from None
    except OSError as e:
        raise UsageError(f"{root}/{name}: cannot read ({e})") from None
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{root}/{name}: manifest does not parse as JSON ({e})") from None
    try:
        manifest = Manifest.parse(obj)
    except ManifestError as e:
        raise UsageError(f"{root}/{name}: not a valid shardgen manifest: {e.problems[0]}") from None
    return Build(root=root, fs=fs, path=path.rstrip("/") or "/", manifest=manifest,
                 storage_options=dict(storage_options or {}))
