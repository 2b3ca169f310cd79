"""SRC and OUT as fsspec URLs (``s3://bucket/raw``): OUT's state on object storage, and the build's
SRC and OUT as two :class:`~shardgen.storage.location.Location` objects.

Writes to object storage are atomic, as on disk: on an object store (S3, GCS, Azure) an
object becomes visible whole or not at all when its one PUT (or its multipart upload)
completes, so every object of the build goes up with one PUT under its final name
(:mod:`shardgen.storage.io`) and no object under a final name is ever partial; elsewhere (a
local folder, SFTP, ...) it is written under a temporary name (``.tmp-<random>-<name>``,
the format's :data:`TMP_PREFIX`) and moved. ``manifest.json`` is written last. Objects
are read with one GET each (no HEAD first). Credentials stay in the
options (or the environment) and are never written into the build or into a message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UsageError
from ..format import MANIFEST, SPLIT_RE, TMP_PREFIX, WORK_DIR, dump_json, is_own_split_file, is_own_top
from .lock import LEASE
from ..storage import is_url
from ..storage.io import put_atomic, read_or_none
from ..storage.location import Location, location

__all__ = ["Paths", "paths_of", "RemoteOut"]

# ---- OUT on object storage -------------------------------------------------------------------------


class RemoteOut:
    """OUT as a URL: its state before the build, temporaries, and the publication of the metadata files.

    Args:
        loc: OUT.
    """

    def __init__(self, loc: Location) -> None:
        self.loc = loc
        self.fs = loc.fs()
        self.root = self.fs._strip_protocol(loc.url).rstrip("/")

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def listing(self) -> dict[str, int]:
        """``{relpath: size}`` of every object under OUT."""
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        return {p[len(self.root) + 1:]: int(i.get("size") or 0) for p, i in found.items()
                if p.startswith(self.root + "/") and i.get("type") != "directory"}

    def _foreign(self, names: list[str]) -> list[str]:
        tops: dict[str, list[str]] = {}
        for rel in names:
            top, _, rest = rel.partition("/")
            tops.setdefault(top, []).append(rest)
        foreign = []
        for top, rests in sorted(tops.items()):
            if is_own_top(top):
                continue
            if SPLIT_RE.match(top) and all(r and "/" not in r and is_own_split_file(top, r) for r in rests):
                continue
            foreign.append(top)
        return foreign

    def prepare(self, fingerprint: dict, overwrite: bool) -> str:
        """Check OUT (as :func:`shardgen.build.outdir.prepare_out`), clean temporaries, record the config.

        Returns:
            the scratch folder's URL.

        Raises:
            UsageError: foreign objects in OUT, or a build of another config (without ``overwrite``).
        """
        from .outdir import decide

        names = [n for n in self.listing() if n != LEASE]  # the lease is the running build's own
        foreign = self._foreign(names)
        if foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise UsageError(f"OUT {self.loc.url} holds objects that are not a shardgen build ({shown}); "
                             "use an empty or new prefix")
        old, where = None, ""
        raw = read_or_none(self.fs, self.path(f"{WORK_DIR}/config.json"))
        if raw is not None:
            old, where = _json_or_none(raw), "an interrupted build"
        if old is None and MANIFEST in names:
            m = _json_or_none(read_or_none(self.fs, self.path(MANIFEST)) or b"")
            if isinstance(m, dict):
                old, where = dict(m.get("config") or {}), "a build"
                old["src"] = fingerprint.get("src")
        state = decide(self.loc.url, old, where, fingerprint, overwrite) if names else "fresh"
        if state == "fresh" and names:
            self.fs.rm([self.path(n) for n in names])
        self.clean_temporaries()
        put_atomic(self.fs, self.path(f"{WORK_DIR}/config.json"), dump_json(fingerprint))
        if MANIFEST in names and state != "fresh":
            self.fs.rm(self.path(MANIFEST))  # readers never see a manifest whose shards are being rewritten
        return self.loc.join(WORK_DIR)

    def clean_temporaries(self) -> None:
        """Remove the temporary objects of interrupted writes."""
        tmp = [self.path(n) for n in self.listing() if n.rsplit("/", 1)[-1].startswith(TMP_PREFIX)]
        if tmp:
            self.fs.rm(tmp)

    def publish(self, staging: str, planned: set[str], split_names: list[str],
                before_manifest: Callable[[], None] | None = None) -> None:
        """Remove stale shards, upload the metadata files written to ``staging``, ``manifest.json`` last
        (``before_manifest()`` just before it: the build's last check of its lease), and remove the
        scratch folder (all but the lease, which the build deletes when it lets OUT go)."""
        existing = self.listing()
        stale = [n for n in existing if n.split("/")[0] != WORK_DIR and "/" in n
                 and (n.endswith(".tar") and n not in planned or n.split("/")[0] not in split_names)]
        if stale:
            self.fs.rm([self.path(n) for n in stale])
        files = sorted(os.path.relpath(os.path.join(d, f), staging) for d, _, fs_ in os.walk(staging) for f in fs_)
        for rel in [f for f in files if f != MANIFEST] + [MANIFEST]:
            if rel == MANIFEST and before_manifest is not None:
                before_manifest()
            with open(os.path.join(staging, rel), "rb") as f:
                put_atomic(self.fs, self.path(rel), f.read())
        work = [self.path(n) for n in self.listing() if n.split("/")[0] == WORK_DIR and n != LEASE]
        if work:
            self.fs.rm(work)


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None


@dataclass
class Paths:
    """SRC and OUT of a build where at least one is a URL (the build's fsspec side).

    Attributes:
        src, out: the two locations (a local path is a location too, on the local filesystem).
    """

    src: Location
    out: Location

    @property
    def src_remote(self) -> bool:
        return is_url(self.src.url)

    @property
    def out_remote(self) -> bool:
        return is_url(self.out.url)

    def for_workers(self) -> "Paths":
        """The same, carrying this process's ``AWS_*`` credentials to workers on other machines."""
        return Paths(self.src.with_env_credentials(), self.out.with_env_credentials())


def paths_of(src: str, out: str, storage_options: dict[str, Any] | None = None,
             endpoint_url: str | None = None) -> Paths | None:
    """:class:`Paths` when SRC or OUT is a URL, else None (the local build, unchanged).

    Raises:
        UsageError: ``--endpoint_url`` or ``--storage_options`` with two local paths; a bad URL.
    """
    if not is_url(src) and not is_url(out):
        if endpoint_url or storage_options:
            raise UsageError("--endpoint_url and --storage_options apply when SRC or OUT is a URL (s3://...)")
        return None
    src_loc = location(src, storage_options, endpoint_url if is_url(src) and src.startswith("s3") else None) \
        if is_url(src) else Location(str(src))
    out_loc = location(out, storage_options, endpoint_url if is_url(out) and out.startswith("s3") else None) \
        if is_url(out) else Location(str(out))
    return Paths(src_loc, out_loc)
