"""The S3 requests of an ``s3:// -> s3://`` build (issue 12's throughput), counted in the build's processes.

On a CPU-bound machine every request costs client and server CPU (botocore signing and parsing,
the server's work), so the build must make only the requests it needs: one GET per source
object (no HEAD before it), one PUT per object under its final name (no temporary copy, server
copy and delete), a chunk's scratch objects in one round trip, and neighbouring PNG ranges of a
shard merged into one ranged GET. A ``sitecustomize`` module on the build's ``PYTHONPATH`` (this
test's harness only) logs every S3 call of every process of the build.
"""

from __future__ import annotations

import collections
import json
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from test_s3 import BUCKET, s3server  # noqa: F401  (the session's SeaweedFS server)

OPTS = ["--size", "64", "--shard_size", "25", "--workers", "2", "--progress", "false"]

HOOK = textwrap.dedent('''
    import os

    _LOG = os.environ.get("SHARDGEN_TEST_S3_LOG")
    if _LOG:
        import s3fs.core

        def _log(line):
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

        _orig = s3fs.core.S3FileSystem._call_s3

        async def _call_s3(self, method, *args, **kwargs):
            key = kwargs.get("Key") or kwargs.get("Prefix") or ""
            _log(f"{method} {'range' if kwargs.get('Range') else 'whole'} {key}\\n")
            return await _orig(self, method, *args, **kwargs)

        s3fs.core.S3FileSystem._call_s3 = _call_s3

        _orig_url = s3fs.core.S3FileSystem._url

        async def _url(self, path, *args, **kwargs):  # shardgen.storage.get's reads: one GET per URL
            url = await _orig_url(self, path, *args, **kwargs)
            _log(f"presigned_get whole {self.split_path(path)[1]}\\n")
            if os.environ.get("SHARDGEN_TEST_S3_REFUSE_URLS"):  # a store that refuses presigned URLs
                url = url.replace("Signature=", "Signature=x")
            return url

        s3fs.core.S3FileSystem._url = _url
''')


def _requests(log: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split(" ", 2)) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def s3_sample(s3server, sample_src, tmp_path_factory):  # noqa: F811
    """``sample_src`` (120 images) uploaded, and its local build's manifest."""
    s3server.client().put(str(sample_src), f"{BUCKET}/req/raw/{sample_src.name}", recursive=True)
    out = tmp_path_factory.mktemp("req-local") / "out"
    run_cli("build", sample_src, out, *OPTS, check=True)
    return f"s3://{BUCKET}/req/raw/{sample_src.name}", json.loads((out / "manifest.json").read_text())


def _logged_build(s3server, url: str, tmp_path: Path, dest: str, **env_extra: str) -> list[tuple[str, str, str]]:  # noqa: F811
    """Build ``url`` into ``dest`` with every S3 call (and presigned GET) of every process logged."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "requests.log"
    env = dict(s3server.env(), PYTHONPATH=f"{ROOT}:{hook}", SHARDGEN_TEST_S3_LOG=str(log), **env_extra)
    run_cli("build", url, dest, *OPTS, env=env, check=True)
    return _requests(log)


def _sources(reqs: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(m, k) for m, r, k in reqs if "/req/raw/" in f"/{k}" and k.endswith(".png")]


def test_s3_build_makes_one_get_per_source_and_one_put_per_object(s3server, s3_sample, tmp_path):  # noqa: F811
    url, local_manifest = s3_sample
    reqs = _logged_build(s3server, url, tmp_path, f"s3://{BUCKET}/req/out")
    kinds = collections.Counter(m for m, _, _ in reqs)
    images = sum(s["samples"] for s in local_manifest["splits"].values())
    sources = _sources(reqs)
    # every source image read once, with one presigned GET (shardgen.storage.get): no HEAD, and
    # not through botocore's per-request machinery
    assert sorted(m for m, _ in sources) == ["presigned_get"] * images
    assert len({k for _, k in sources}) == images
    assert kinds["head_object"] <= 2, kinds  # (only OUT's state at the start)
    assert "copy_object" not in kinds and kinds["delete_objects"] <= 1, kinds  # no temporary object moved
    shards = [sh for s in local_manifest["splits"].values() for sh in s["shards"]]
    tars = [k for m, _, k in reqs if m == "put_object" and k.endswith(".tar")]
    assert len(tars) == len(shards)  # one PUT per shard, under its final name
    scratch_puts = [k for m, _, k in reqs if m == "put_object" and "/.shardgen-work/chunks/" in k]
    assert len(scratch_puts) == 2 * -(-images // 64)  # a chunk's .bin and records
    ranged = [k for m, r, k in reqs if m in ("get_object", "presigned_get") and k.endswith(".bin")]
    assert len(ranged) <= 2 * len(shards)  # neighbouring PNGs of a chunk: one ranged read
    assert len(reqs) <= 1.5 * images, kinds

    fs = s3server.client()
    fs.invalidate_cache()
    m = json.loads(fs.cat_file(f"{BUCKET}/req/out/manifest.json"))
    assert [sh["xxh64"] for s in m["splits"].values() for sh in s["shards"]] == [sh["xxh64"] for sh in shards]
    assert not [k for k in fs.find(f"{BUCKET}/req/out") if ".tmp-" in k or ".shardgen-work" in k]


def test_s3_build_falls_back_to_s3fs_where_presigned_urls_are_refused(s3server, s3_sample, tmp_path):  # noqa: F811
    """A store that refuses the presigned URLs (a signature version it does not take): the first
    refused reads are retried through s3fs, which then reads every source; the same shards."""
    url, local_manifest = s3_sample
    dest = f"s3://{BUCKET}/req/out-refused"
    reqs = _logged_build(s3server, url, tmp_path, dest, SHARDGEN_TEST_S3_REFUSE_URLS="1")
    images = sum(s["samples"] for s in local_manifest["splits"].values())
    sources = _sources(reqs)
    got = collections.Counter(k for m, k in sources if m == "get_object")
    assert sorted(got) == sorted({k for _, k in sources}) and len(got) == images
    assert set(got.values()) == {1}  # each source read by s3fs once
    # the refused URLs: at most one batch per build process before the fast path is switched off
    assert 0 < sum(m == "presigned_get" for m, _ in sources) <= 2 * 16
    fs = s3server.client()
    fs.invalidate_cache()
    m = json.loads(fs.cat_file(f"{BUCKET}/req/out-refused/manifest.json"))
    shards = [sh["xxh64"] for s in local_manifest["splits"].values() for sh in s["shards"]]
    assert [sh["xxh64"] for s in m["splits"].values() for sh in s["shards"]] == shards


def test_read_many_returns_what_s3fs_cat_returns(s3server):  # noqa: F811
    """Objects, a missing object and refused credentials: the presigned reads give the same
    bytes and the same errors as ``fs.cat(..., on_error="return")``."""
    import fsspec

    from shardgen.storage.get import read_many

    fs = s3server.client()
    objs = {f"{BUCKET}/rm/{i}.png": bytes([i]) * (1000 + i) for i in range(20)}
    fs.pipe(objs)
    paths = [*objs, f"{BUCKET}/rm/missing.png", f"s3://{BUCKET}/rm/3.png"]
    got = read_many(fs, paths)
    assert {p: got[p] for p in objs} == objs and got[f"s3://{BUCKET}/rm/3.png"] == objs[f"{BUCKET}/rm/3.png"]
    assert isinstance(got[f"{BUCKET}/rm/missing.png"], FileNotFoundError)
    wrong = fsspec.filesystem("s3", key=s3server.access_key, secret="not-the-secret", skip_instance_cache=True,
                              client_kwargs={"endpoint_url": s3server.endpoint})
    refused = read_many(wrong, list(objs)[:3])
    assert all(isinstance(v, PermissionError) for v in refused.values()), refused


def test_read_ranges_returns_what_s3fs_cat_ranges_returns(s3server):  # noqa: F811
    """Ranged presigned reads: the same bytes as ``fs.cat_ranges``, a range past the end and a
    missing object included."""
    from shardgen.storage.get import read_ranges

    fs = s3server.client()
    fs.pipe({f"{BUCKET}/rr/a.bin": bytes(range(256)) * 40, f"{BUCKET}/rr/b.bin": b"xyz" * 1000})
    paths = [f"{BUCKET}/rr/a.bin", f"{BUCKET}/rr/b.bin", f"{BUCKET}/rr/a.bin", f"{BUCKET}/rr/a.bin",
             f"{BUCKET}/rr/missing.bin"]
    starts, ends = [0, 5, 1000, 10200, 0], [10, 3000, 9000, 10300, 5]
    got = read_ranges(fs, paths, starts, ends)
    want = fs.cat_ranges(paths, starts, ends, on_error="return")
    assert got[:4] == want[:4] and got[3] == (bytes(range(256)) * 40)[10200:]  # past the end: what is there
    assert isinstance(got[4], FileNotFoundError)
