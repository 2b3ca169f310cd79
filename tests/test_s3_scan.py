"""The scan of an ``s3://`` SRC: one streaming listing, the same tree as s3fs's ``find``, and
memory that does not hold every object's listing record (issue 12's client memory)."""

from __future__ import annotations

import gc
import tracemalloc

from test_s3 import BUCKET, s3server  # noqa: F401  (the session's SeaweedFS server)

from shardgen.storage.location import location
from shardgen.sources.url import _remote_tree


def _find_tree(fs, root: str) -> dict[str, tuple[list[str], list[str]]]:
    """The folders that s3fs's ``find`` gives (the scan's listing before it streamed); an
    object named ``folder/`` (a console's empty-folder marker) is a folder, not a file ``""``."""
    folders: dict[str, tuple[set[str], set[str]]] = {"": (set(), set())}
    for path, info in fs.find(root, withdirs=True, detail=True).items():
        rel, marker = path[len(root) + 1:].rstrip("/"), path.endswith("/")
        if not rel or any(p.startswith(".") for p in rel.split("/")):
            continue
        parts = rel.split("/")
        for i in range(len(parts)):
            folders.setdefault("/".join(parts[:i]), (set(), set()))
        parent = "/".join(parts[:-1])
        if info["type"] == "directory" or marker:
            folders[parent][0].add(parts[-1])
            folders.setdefault(rel, (set(), set()))
        else:
            folders[parent][1].add(parts[-1])
    for rel in list(folders):
        if rel:
            parent, _, name = rel.rpartition("/")
            folders[parent][0].add(name)
    return {k: (sorted(d), sorted(f)) for k, (d, f) in folders.items()}


def test_s3_listing_gives_the_tree_that_find_gives(s3server, monkeypatch):  # noqa: F811
    for k, v in s3server.env().items():
        monkeypatch.setenv(k, v)
    fs = s3server.client()
    root = f"{BUCKET}/scan/raw"
    fs.pipe({f"{root}/{k}": b"x" for k in [
        "COVID/images/a.png", "COVID/images/b.png", "COVID/masks/a.png", "Normal/images/c.png",
        "Normal/images/deep/d.png", ".hidden/x.png", "Normal/.cache/y.png", "README.md", "empty/"]})
    fs.invalidate_cache()
    tree = _remote_tree(location(f"s3://{root}", endpoint_url=s3server.endpoint))
    assert tree.folders == _find_tree(fs, root)
    assert tree.folders["COVID/images"] == ([], ["a.png", "b.png"])
    assert "empty" in tree.folders[""][0] and ".hidden" not in tree.folders[""][0]


def test_s3_listing_holds_no_listing_record_per_object(s3server, monkeypatch):  # noqa: F811
    """3,000 objects: after the scan the client holds the tree (names), not s3fs's ~1 KB info
    dict per object in its listings cache."""
    for k, v in s3server.env().items():
        monkeypatch.setenv(k, v)
    fs = s3server.client()
    root = f"{BUCKET}/scanmem/raw"
    n = 3000
    fs.pipe({f"{root}/Class{i % 3}/images/image-{i:06d}.png": b"x" for i in range(n)})
    loc = location(f"s3://{root}", endpoint_url=s3server.endpoint)
    loc.fs().ls(BUCKET)  # the client's start (botocore's models) before the measurement
    loc.fs().invalidate_cache()
    gc.collect()
    tracemalloc.start()
    try:
        tree = _remote_tree(loc)
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert sum(len(files) for _, files in tree.folders.values()) == n
    assert held / n < 300, f"{held / n:.0f} bytes per object held after the scan"
