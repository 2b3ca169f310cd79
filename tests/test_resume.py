"""Crash-safe, resumable builds (issue 6): real kills, real full and read-only filesystems."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, default_sigint, run_cli, sample_tool

OPTS = ["--size", "32", "--shard_size", "50", "--progress", "false"]


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def big_src(tmp_path_factory) -> Path:
    """2,000 images (4 classes x 500) in the Kaggle layout."""
    root = tmp_path_factory.mktemp("big")
    return Path(sample_tool.make_dataset(str(root), {c: 500 for c in sample_tool.FULL_COUNTS}, seed=3, workers=2))


@pytest.fixture(scope="module")
def reference(big_src, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("ref") / "out"
    run_cli("build", big_src, out, *OPTS, "--workers", "2", check=True)
    return tree(out)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start(args, **kw) -> subprocess.Popen:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                            start_new_session=True, preexec_fn=default_sigint, **kw)


def wait_for(cond, timeout=120.0, proc=None):
    t0 = time.monotonic()
    while not cond():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting")
        time.sleep(0.01)


def kill_at(point: str, src: Path, out: Path, tmp: Path, workers: int = 1) -> None:
    marker = tmp / f"marker-{point.replace(':', '-')}"
    p = start([sys.executable, str(ROOT / "tests" / "inject_build.py"), point, str(marker), "--",
               "build", str(src), str(out), *OPTS, "--workers", str(workers)])
    wait_for(marker.exists, proc=p)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    p.stdout.close()
    p.stderr.close()


def assert_nothing_partial(out: Path, reference: dict[str, bytes]) -> None:
    """Every file under a final name is complete: identical to the uninterrupted build."""
    for rel, data in tree(out).items():
        name = os.path.basename(rel)
        if rel.startswith(".shardgen-work") or name.startswith(".tmp-"):
            continue
        assert rel in reference, f"unexpected file {rel}"
        assert data == reference[rel], f"{rel} differs from the uninterrupted build"
        if rel.endswith(".tar"):
            with tarfile.open(out / rel) as tf:
                tf.getmembers()


@pytest.mark.slow
@pytest.mark.parametrize("point", ["chunk:1", "chunk:17", "shard:3:20", "shard:0:1", "manifest", "after-manifest"])
def test_sigkill_then_resume_is_byte_identical(big_src, reference, tmp_path, point):
    out = tmp_path / "out"
    kill_at(point, big_src, out, tmp_path)
    assert_nothing_partial(out, reference)
    p = run_cli("build", big_src, out, *OPTS, "--workers", "2", check=True)
    assert tree(out) == reference
    if point.startswith(("shard", "manifest", "after")):
        assert "reused 32/32 chunks" in p.stdout  # converting was not redone
    if point == "chunk:17":
        assert "reused 17/32 chunks" in p.stdout


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_stop_promptly_and_resume(big_src, reference, tmp_path, sig, code):
    out = tmp_path / "out"
    chunks = out / ".shardgen-work" / "chunks"
    p = start([sys.executable, "-m", "shardgen", "build", str(big_src), str(out), *OPTS, "--workers", "2"])
    wait_for(lambda: chunks.is_dir() and len(list(chunks.glob("*.json"))) >= 4, proc=p)
    t0 = time.monotonic()
    os.killpg(p.pid, sig) if sig == signal.SIGINT else p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert p.returncode == code, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not [f for f in tree(out) if os.path.basename(f).startswith(".tmp-")]
    assert_nothing_partial(out, reference)
    run_cli("build", big_src, out, *OPTS, "--workers", "2", check=True)
    assert tree(out) == reference


@pytest.mark.slow
def test_changed_sources_are_reconverted(big_src, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(big_src, src, symlinks=True)
    out = tmp_path / "out"
    kill_at("chunk:5", src, out, tmp_path)
    # Change an image that an already-finished chunk converted.
    victim = src / "COVID" / "images" / "COVID-1.png"
    Image.fromarray(np.full((299, 299), 17, np.uint8)).save(victim)
    run_cli("build", src, out, *OPTS, "--workers", "2", check=True)
    fresh = tmp_path / "fresh"
    run_cli("build", src, fresh, *OPTS, "--workers", "2", check=True)
    assert tree(out) == tree(fresh)


@pytest.mark.slow
def test_other_config_refuses_unless_overwrite(big_src, reference, tmp_path):
    out = tmp_path / "out"
    kill_at("chunk:3", big_src, out, tmp_path)
    p = run_cli("build", big_src, out, *OPTS, "--seed", "5")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "different config: seed (was 0, now 5)" in p.stderr
    run_cli("build", big_src, out, *OPTS, "--seed", "5", "--overwrite", check=True)
    assert tree(out) != reference
    # A finished build with another config is refused too, and --overwrite replaces it.
    p = run_cli("build", big_src, out, *OPTS, "--size", "16")
    assert p.returncode == 2 and "size (was 32, now 16)" in p.stderr
    run_cli("build", big_src, out, *OPTS, "--overwrite", check=True)
    assert tree(out) == reference


# ---------------------------------------------------------------- full and read-only filesystems

@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def remount(mnt: Path, opts: str, timeout: float = 30.0) -> None:
    t0 = time.monotonic()
    while True:
        r = subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], capture_output=True, text=True)
        if r.returncode == 0:
            return
        if time.monotonic() - t0 > timeout:
            pytest.skip(f"cannot remount {opts}: {r.stderr.strip()}")
        time.sleep(0.005)


@pytest.mark.slow
def test_disk_full_gives_one_line_and_resumes_after_space_is_freed(big_src, reference, tmpfs):
    """A 2 MiB tmpfs cannot hold the ~4 MiB of scratch and shards."""
    out = tmpfs / "out"
    p = run_cli("build", big_src, out, *OPTS, "--workers", "2")
    assert p.returncode == 1, p.stderr
    assert "No space left on device" in p.stderr and "run the same command again to resume" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert_nothing_partial(out, reference)
    remount(tmpfs, "size=64m")
    run_cli("build", big_src, out, *OPTS, "--workers", "2", check=True)
    assert tree(out) == reference


@pytest.mark.slow
def test_out_made_read_only_part_way(big_src, reference, tmpfs):
    remount(tmpfs, "size=64m")
    out = tmpfs / "out"
    chunks = out / ".shardgen-work" / "chunks"
    p = start([sys.executable, "-m", "shardgen", "build", str(big_src), str(out), *OPTS, "--workers", "2"])
    wait_for(lambda: chunks.is_dir() and len(list(chunks.glob("*.json"))) >= 3, proc=p)
    remount(tmpfs, "ro")
    _, err = p.communicate(timeout=120)
    remount(tmpfs, "rw")
    assert p.returncode == 1, err
    assert "Read-only file system" in err and "Traceback" not in err
    assert_nothing_partial(out, reference)
    run_cli("build", big_src, out, *OPTS, "--workers", "2", check=True)
    assert tree(out) == reference
