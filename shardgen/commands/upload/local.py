"""The local side of an upload: open a finished build and check its shards against the manifest."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ...cpus import usable_cpus
from ...errors import UsageError
from ...format import (CLASSES, DATASET_CARD, DATASET_JSON, DUPLICATES, MANIFEST, SKIPPED, WORK_DIR, Manifest,
                       file_xxh64, wids_index_name)
from ...progress import bar
from ...storage import open_build
from ...storage.scrub import display_url
from .dest import BLOCK

__all__ = ["Shard", "LocalBuild", "local_build", "verify_local"]


@dataclass
class Shard:
    """A shard to send: its path in the build, on this disk, its size (bytes) and xxh64."""

    rel: str
    local: str
    bytes: int
    xxh64: str


@dataclass
class LocalBuild:
    """A finished local build, checked for completeness.

    Attributes:
        src: the build folder.
        manifest: the parsed manifest.
        manifest_bytes: ``manifest.json`` as it is on disk (sent unchanged, last).
        shards: every shard the manifest lists.
        files: the other files to send (relative paths), the manifest not included.
    """

    src: str
    manifest: Manifest
    manifest_bytes: bytes
    shards: list[Shard]
    files: list[str]


def _finished_folder(out: str) -> str:
    """The build folder named by ``out`` (a folder or its manifest), if it holds a finished build."""
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
    return src


def local_build(out: str) -> LocalBuild:
    """Open and check the local build in ``out``.

    Raises:
        UsageError: not a folder, not a finished build, an unsafe shard path in the
            manifest, or a file the manifest relies on is missing.
    """
    src = _finished_folder(out)
    build = open_build(os.path.abspath(src))
    with open(os.path.join(src, MANIFEST), "rb") as f:
        manifest_bytes = f.read()
    shards: list[Shard] = []
    for s in build.manifest.splits.values():
        for sh in s.shards:
            rel = sh.path
            if rel.startswith("/") or ".." in rel.split("/") or "\\" in rel:
                raise UsageError(f"OUT {src}: manifest lists an unsafe shard path {rel!r}")
            shards.append(Shard(rel, os.path.join(src, *rel.split("/")), sh.bytes, sh.xxh64.lower()))
    files = [CLASSES] + [f"{sp}/{DATASET_JSON}" for sp in build.manifest.splits]
    missing = [f for f in files if not os.path.isfile(os.path.join(src, *f.split("/")))]
    if missing:
        raise UsageError(f"OUT {src} is not a complete build: missing {', '.join(missing[:3])}")
    # Optional: builds made before these files existed lack them.
    readers = [f"{sp}/{wids_index_name(sp)}" for sp in build.manifest.splits] + [DATASET_CARD]
    for opt in [SKIPPED, DUPLICATES] + readers:
        if os.path.isfile(os.path.join(src, *opt.split("/"))):
            files.append(opt)
    return LocalBuild(src, build.manifest, manifest_bytes, shards, files)


def verify_local(src: str, shards: list[Shard], workers: int, progress: bool) -> None:
    """Sizes and xxh64 of the local shards against the manifest.

    Args:
        src: the build folder (for messages).
        shards: the shards to check.
        workers: threads hashing at once (at most the usable cores).
        progress: a progress bar (bytes) on stderr.

    Raises:
        UsageError: a shard is missing, has another size or another xxh64 (nothing is sent).
    """
    bad: list[str] = []
    lock = threading.Lock()
    with bar(sum(s.bytes for s in shards), "check local", enabled=progress, byte_units=True) as b:
        def one(s: Shard) -> None:
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
                b.update(n)
                if digest != s.xxh64:
                    bad.append(f"{s.rel} has xxh64 {digest}, the manifest says {s.xxh64}")

        with ThreadPoolExecutor(max(1, min(workers, usable_cpus(), len(shards) or 1))) as ex:
            list(ex.map(one, shards))
    if bad:
        bad.sort()
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise UsageError(f"OUT {src} does not match its manifest: {bad[0]}{more}; nothing was uploaded "
                         f"(run shardgen verify {src}, then rebuild)")
