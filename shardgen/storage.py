"""Locate a build (local folder, ``manifest.json`` path, or any fsspec URL) and read it.

Everything that reads a finished build (loaders, verify, info, preview, stylegan)
goes through :func:`open_build`, so local paths, ``s3://`` and ``http(s)://`` behave
the same. Credentials and endpoints come from the usual places (environment,
AWS config files) or from ``storage_options``; nothing here writes them anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .errors import UsageError
from .format import MANIFEST, validate_manifest

__all__ = ["Build", "open_build", "split_url", "is_url"]


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


def _default_storage_options(protocol: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """Return ``(fs, path)`` for ``url``; S3 endpoint from ``AWS_ENDPOINT_URL`` unless given."""
    protocol = fsspec.utils.get_protocol(str(url))
    opts = _default_storage_options(protocol)
    if storage_options:
        opts.update(storage_options)
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
        manifest: the parsed ``manifest.json``.
    """

    root: str
    fs: Any
    path: str
    manifest: dict[str, Any]
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    def join(self, relpath: str) -> str:
        """Filesystem path of ``relpath`` inside the build."""
        return self.path.rstrip("/") + "/" + relpath

    def url(self, relpath: str) -> str:
        """Full URL (or local path) of ``relpath`` inside the build."""
        return self.root.rstrip("/") + "/" + relpath

    def open(self, relpath: str, mode: str = "rb"):
        return self.fs.open(self.join(relpath), mode)

    def split(self, name: str) -> dict[str, Any]:
        try:
            return self.manifest["splits"][name]
        except KeyError:
            raise UsageError(
                f"{self.root}: no split {name!r} (splits: {', '.join(self.splits)})"
            ) from None


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
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UsageError(f"{root}/{name}: manifest does not parse as JSON ({e})") from None
    problems = validate_manifest(manifest)
    if problems:
        raise UsageError(f"{root}/{name}: not a valid shardgen manifest: {problems[0]}")
    return Build(root=root, fs=fs, path=path.rstrip("/") or "/", manifest=manifest,
                 storage_options=dict(storage_options or {}))
