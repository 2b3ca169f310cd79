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

        _orig = s3fs.core.S3FileSystem._call_s3

        async def _call_s3(self, method, *args, **kwargs):
            key = kwargs.get("Key") or kwargs.get("Prefix") or ""
            line = f"{method} {'range' if kwargs.get('Range') else 'whole'} {key}\\n"
            fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
            return await _orig(self, method, *args, **kwargs)

        s3fs.core.S3FileSystem._call_s3 = _call_s3
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


def test_s3_build_makes_one_get_per_source_and_one_put_per_object(s3server, s3_sample, tmp_path):  # noqa: F811
    url, local_manifest = s3_sample
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    log = tmp_path / "requests.log"
    env = dict(s3server.env(), PYTHONPATH=f"{ROOT}:{hook}", SHARDGEN_TEST_S3_LOG=str(log))
    dest = f"s3://{BUCKET}/req/out"
    run_cli("build", url, dest, *OPTS, env=env, check=True)

    reqs = _requests(log)
    kinds = collections.Counter(m for m, _, _ in reqs)
    images = sum(s["samples"] for s in local_manifest["splits"].values())
    sources = [k for m, r, k in reqs if "/req/raw/" in f"/{k}" and k.endswith(".png")]
    assert len(sources) == len(set(sources)) == images  # every source image read once ...
    assert all(m == "get_object" for m, r, k in reqs if k in set(sources))  # ... with one GET, no HEAD
    assert kinds["head_object"] <= 2, kinds  # (only OUT's state at the start)
    assert "copy_object" not in kinds and kinds["delete_objects"] <= 1, kinds  # no temporary object moved
    shards = [sh for s in local_manifest["splits"].values() for sh in s["shards"]]
    tars = [k for m, _, k in reqs if m == "put_object" and k.endswith(".tar")]
    assert len(tars) == len(shards)  # one PUT per shard, under its final name
    scratch_puts = [k for m, _, k in reqs if m == "put_object" and "/.shardgen-work/chunks/" in k]
    assert len(scratch_puts) == 2 * -(-images // 64)  # a chunk's .bin and records
    ranged = [k for m, r, k in reqs if r == "range" and k.endswith(".bin")]
    assert len(ranged) <= 2 * len(shards)  # neighbouring PNGs of a chunk: one ranged read
    assert len(reqs) <= 1.5 * images, kinds

    fs = s3server.client()
    fs.invalidate_cache()
    m = json.loads(fs.cat_file(f"{BUCKET}/req/out/manifest.json"))
    assert [sh["xxh64"] for s in m["splits"].values() for sh in s["shards"]] == [sh["xxh64"] for sh in shards]
    assert not [k for k in fs.find(f"{BUCKET}/req/out") if ".tmp-" in k or ".shardgen-work" in k]
