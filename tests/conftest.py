"""Shared fixtures: generated datasets in the Kaggle layout and small builds made through the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

import make_sample_dataset as sample_tool  # noqa: E402


def default_sigint() -> None:
    """preexec_fn: give the child the default SIGINT disposition.

    A shell starts background jobs with SIGINT ignored, and children inherit that; Python
    then never raises KeyboardInterrupt. Tests that press Ctrl-C must not depend on how
    the test run itself was started.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_cli(*args: str, check: bool = False, timeout: float = 600, env: dict | None = None,
            cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m shardgen ARGS`` in a subprocess; returns the completed process (text)."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    if env:
        full_env.update(env)
    p = subprocess.run([sys.executable, "-m", "shardgen", *map(str, args)], capture_output=True,
                       text=True, timeout=timeout, env=full_env, cwd=cwd)
    if check and p.returncode != 0:
        raise AssertionError(f"shardgen {' '.join(map(str, args))} exited {p.returncode}\n"
                             f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def group_gone(pgid: int, within_s: float = 15) -> bool:
    """No process is left in the process group ``pgid`` (exited ones are reaped by init shortly after)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def make_build(src: Path, out: Path, size: int = 64, shard_size: int = 25) -> Path:
    """``shardgen build SRC OUT`` through the CLI with small images (2 workers, no progress bar)."""
    run_cli("build", src, out, "--size", size, "--shard_size", shard_size, "--workers", "2",
            "--progress", "false", check=True)
    return out


@pytest.fixture(scope="session", autouse=True)
def decoded_cache_place(tmp_path_factory):
    """The loaders' decoded cache (on by default) lives in the session's temp folder, never
    in the user's /dev/shm or ~/.cache; subprocesses inherit the variable."""
    from loaders.read.decoded.place import ENV_PLACE

    old = os.environ.get(ENV_PLACE)
    os.environ[ENV_PLACE] = str(tmp_path_factory.mktemp("decoded-cache"))
    yield Path(os.environ[ENV_PLACE])
    if old is None:
        os.environ.pop(ENV_PLACE, None)
    else:
        os.environ[ENV_PLACE] = old


@pytest.fixture(scope="session")
def sample_src(tmp_path_factory) -> Path:
    """A clean synthetic Kaggle-layout dataset: 4 classes x 30 images (299x299)."""
    root = tmp_path_factory.mktemp("sample")
    base = sample_tool.make_dataset(str(root), {c: 30 for c in sample_tool.FULL_COUNTS}, seed=0, workers=2)
    return Path(base)


@pytest.fixture(scope="session")
def hostile_src(tmp_path_factory) -> Path:
    """The same layout, 4 x 12 images, plus broken and unusual files (see add_hostile)."""
    root = tmp_path_factory.mktemp("hostile")
    base = sample_tool.make_dataset(str(root), {c: 12 for c in sample_tool.FULL_COUNTS}, seed=1,
                                    hostile=True, workers=2)
    return Path(base)


@pytest.fixture(scope="session")
def small_build(sample_src, tmp_path_factory) -> Path:
    """``shardgen build`` of ``sample_src`` at 64x64, 25 samples per shard, train=0.8,test=0.2.

    Read-only for tests: copy it (shutil.copytree) before corrupting anything.
    """
    return make_build(sample_src, tmp_path_factory.mktemp("build") / "out")


@pytest.fixture
def decode_calls(monkeypatch) -> list:
    """Count the loaders' PNG decodes in this process: the returned list grows by one per
    call of ``loaders.read.samples.decode_into`` (clear it to start counting afresh)."""
    import loaders.read.samples as stream

    calls: list = []
    real = stream.decode_into

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(stream, "decode_into", counting)
    return calls
