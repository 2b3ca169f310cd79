"""``upload`` never writes over someone else's files (issue 22): a destination holding files but no
shardgen manifest, or another build's unfinished upload, needs ``--overwrite``; an interrupted
upload of the same build resumes without it; ``--overwrite`` over another build takes that
build's manifest and indexes down before its first shard changes. On a local folder and on
SeaweedFS (real server), through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from test_s3 import BUCKET, counts, many_shards, objects, one_line_error, s3env, s3server, shard_paths  # noqa: F401

MARKER = ".shardgen-upload.json"


def _plant_foreign_folder(dest: Path) -> dict[str, bytes]:
    dest.mkdir(parents=True)
    (dest / "README.md").write_bytes(b"my own notes, not a shardgen build\n")
    (dest / "train").mkdir()
    (dest / "train" / "train-000000.tar").write_bytes(b"someone else's shard")
    (dest / "results.csv").write_bytes(b"a,b\n1,2\n")
    return {str(p.relative_to(dest)): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def test_upload_into_a_folder_with_foreign_files_needs_overwrite(small_build, tmp_path):
    dest = tmp_path / "dest"
    planted = _plant_foreign_folder(dest)
    p = run_cli("upload", small_build, dest, "--progress", "false")
    line = one_line_error(p, str(dest), "holds files but no shardgen manifest.json", "--overwrite")
    assert "'README.md'" in line and "'results.csv'" in line
    assert {str(q.relative_to(dest)): q.read_bytes() for q in dest.rglob("*") if q.is_file()} == planted

    p = run_cli("upload", small_build, dest, "--overwrite", "--progress", "false")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (dest / "README.md").read_bytes() == (small_build / "README.md").read_bytes()
    assert (dest / "results.csv").read_bytes() == planted["results.csv"]  # not ours: left alone
    assert not (dest / MARKER).exists()
    v = run_cli("verify", dest)
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.s3
def test_upload_into_a_prefix_with_foreign_objects_needs_overwrite(small_build, s3server, s3env):  # noqa: F811
    prefix = "safety/foreign"
    fs = s3server.filesystem()
    fs.pipe_file(f"{BUCKET}/{prefix}/README.md", b"someone's notes")
    fs.pipe_file(f"{BUCKET}/{prefix}/train/train-000000.tar", b"someone else's shard")
    before = {k: v["ETag"] for k, v in objects(s3server, prefix).items()}
    url = f"s3://{BUCKET}/{prefix}"
    p = run_cli("upload", small_build, url, "--progress", "false", env=s3env)
    one_line_error(p, url, "holds files but no shardgen manifest.json", "--overwrite")
    assert {k: v["ETag"] for k, v in objects(s3server, prefix).items()} == before

    p = run_cli("upload", small_build, url, "--overwrite", "--progress", "false", env=s3env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert MARKER not in objects(s3server, prefix)
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr


def _start_upload(build: Path, url: str, s3env: dict, *extra: str) -> subprocess.Popen:  # noqa: F811
    env = dict(os.environ, **s3env, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "shardgen", "upload", str(build), url, "--workers", "1",
                             "--progress", "false", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(server, proc: subprocess.Popen, ready) -> None:
    """Kill ``proc`` once ``ready()``, with the server frozen so that nothing more completes."""
    deadline = time.monotonic() + 120
    try:
        while not ready():
            assert proc.poll() is None, "the upload finished before it could be interrupted"
            assert time.monotonic() < deadline, "the upload made no progress"
            time.sleep(0.02)
        server.pause()
        proc.kill()
        proc.wait(30)
    finally:
        server.resume()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    time.sleep(1.0)  # a request the server had fully received before the freeze may still land


@pytest.mark.s3
def test_an_interrupted_upload_resumes_but_another_build_needs_overwrite(many_shards, small_build,  # noqa: F811
                                                                       s3server, s3env):  # noqa: F811
    prefix = "safety/unfinished"
    url = f"s3://{BUCKET}/{prefix}"
    proc = _start_upload(many_shards, url, s3env)
    _kill_when(s3server, proc, lambda: len([k for k in objects(s3server, prefix) if k.endswith(".tar")]) >= 2)
    left = objects(s3server, prefix)
    assert "manifest.json" not in left and MARKER in left
    marker = json.loads(s3server.filesystem().cat_file(f"{BUCKET}/{prefix}/{MARKER}"))
    assert marker["pid"] == proc.pid and "upload" in marker["command"]

    p = run_cli("upload", small_build, url, "--progress", "false", env=s3env)
    one_line_error(p, url, "holds an unfinished upload of another build", f"pid {proc.pid}", "--overwrite")
    assert {k: v["ETag"] for k, v in objects(s3server, prefix).items()} == {k: v["ETag"] for k, v in left.items()}

    p = run_cli("upload", many_shards, url, "--progress", "false", env=s3env)  # the same build: resumed
    assert p.returncode == 0, p.stdout + p.stderr
    sent, skipped = counts(p)
    assert skipped >= 2 and sent + skipped == len(shard_paths(many_shards))
    assert MARKER not in objects(s3server, prefix)
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.s3
def test_overwrite_takes_the_old_build_down_before_its_shards_change(many_shards, small_build,  # noqa: F811
                                                                    s3server, s3env):  # noqa: F811
    """Killed part-way through replacing a build: no manifest and no index of the old build is left
    to lead a new reader (or a wids reader) onto the new shards; the re-run finishes the job."""
    prefix = "safety/replace"
    url = f"s3://{BUCKET}/{prefix}"
    run_cli("upload", many_shards, url, "--progress", "false", env=s3env, check=True)
    old = {k: v["ETag"] for k, v in objects(s3server, prefix).items()}
    assert any(k.endswith(".wids.json") for k in old) and any(k.endswith("/dataset.json") for k in old)

    def a_shard_changed() -> bool:
        now = objects(s3server, prefix)
        return any(k.endswith(".tar") and old.get(k) != v["ETag"] for k, v in now.items())

    proc = _start_upload(small_build, url, s3env, "--overwrite")
    _kill_when(s3server, proc, a_shard_changed)
    left = objects(s3server, prefix)
    assert "manifest.json" not in left
    assert not [k for k in left if k.endswith((".wids.json", "/dataset.json"))], sorted(left)
    v = run_cli("verify", url, env=s3env)
    assert v.returncode != 0 and "manifest.json" in v.stdout + v.stderr

    p = run_cli("upload", small_build, url, "--progress", "false", env=s3env)  # its own unfinished upload
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(k for k in objects(s3server, prefix) if k.endswith(".tar")) == sorted(shard_paths(small_build))
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr
