"""An S3 that fails some requests with ``500 InternalError`` (as real S3 does now and then),
through a proxy in front of the test server (``flakyproxy.py``): an ``s3:// -> s3://`` build
retries them and gives the same shards; a store that keeps failing ends the build with one
line, and the next run resumes it."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from flakyproxy import FlakyProxy
from test_s3 import BUCKET, s3server  # noqa: F401  (the session's SeaweedFS server)

OPTS = ["--size", "64", "--shard_size", "25", "--workers", "2", "--progress", "false"]


@pytest.fixture(scope="module")
def faults_sample(s3server, sample_src, tmp_path_factory):  # noqa: F811
    """``sample_src`` (120 images) uploaded, and its local build's shard checksums."""
    s3server.client().put(str(sample_src), f"{BUCKET}/faults/raw/{sample_src.name}", recursive=True)
    out = tmp_path_factory.mktemp("faults-local") / "out"
    run_cli("build", sample_src, out, *OPTS, check=True)
    m = json.loads((out / "manifest.json").read_text())
    return f"s3://{BUCKET}/faults/raw/{sample_src.name}", [sh["xxh64"] for s in m["splits"].values()
                                                            for sh in s["shards"]]


def _env(s3server, proxy: FlakyProxy) -> dict[str, str]:  # noqa: F811
    return dict(s3server.env(), AWS_ENDPOINT_URL=proxy.endpoint)


def _shards(s3server, dest: str) -> list[str]:  # noqa: F811
    fs = s3server.client()
    fs.invalidate_cache()
    m = json.loads(fs.cat_file(f"{dest}/manifest.json"))
    return [sh["xxh64"] for s in m["splits"].values() for sh in s["shards"]]


def test_s3_build_retries_internal_errors(s3server, faults_sample):  # noqa: F811
    """Every 4th GET (sources and scratch ranges) and every 3rd PUT (scratch, shards, metadata)
    answered 500 once: the build retries them and its shards are the local build's."""
    url, local = faults_sample

    def fail(method: str, path: str, n: int) -> bool:
        return (method == "GET" and "/faults/" in path and n % 4 == 0) or (method == "PUT" and n % 3 == 1)

    proxy = FlakyProxy(s3server.endpoint, fail).start()
    try:
        p = run_cli("build", url, f"s3://{BUCKET}/faults/out", *OPTS, env=_env(s3server, proxy))
    finally:
        proxy.stop()
    assert p.returncode == 0, p.stderr
    assert proxy.failed >= 20, proxy.failed  # the faults were there, and were met
    assert _shards(s3server, f"{BUCKET}/faults/out") == local
    assert "Traceback" not in p.stderr


def test_s3_build_that_keeps_failing_stops_with_one_line_and_resumes(s3server, faults_sample):  # noqa: F811
    """Every PUT of a shard fails: the build ends with one line (exit 1), no traceback, and
    leaves OUT resumable; the same command against a healthy store finishes it, with the
    converted chunks reused and the local build's shards."""
    url, local = faults_sample
    dest = f"s3://{BUCKET}/faults/out-resume"
    proxy = FlakyProxy(s3server.endpoint, lambda method, path, n: method == "PUT" and path.endswith(".tar")).start()
    try:
        p = run_cli("build", url, dest, *OPTS, env=_env(s3server, proxy))
    finally:
        proxy.stop()
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "storage error while writing shards" in lines[0], p.stderr
    assert "resum" in lines[0] and "Traceback" not in p.stderr
    assert not s3server.client().exists(f"{dest}/manifest.json")

    again = run_cli("build", url, dest, *OPTS, env=s3server.env(), check=True)
    assert "reused" in again.stdout.lower() or "reused" in again.stderr.lower(), again.stdout
    assert _shards(s3server, dest.removeprefix("s3://")) == local
