"""Resume trusts unchanged sources by their stat stamp and reads only changed ones (issue 13)."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, sample_tool
from shardgen.sources.stamps import RECENT_NS, stamp_of, unchanged
from test_resume import OPTS, kill_at, tree

VICTIM = Path("COVID") / "images" / "COVID-1.png"  # in chunk 0 (sorted paths)


def _stored_png(path: Path, value: int) -> None:
    """A 299x299 grayscale PNG without compression: its size depends on the pixel count only."""
    Image.fromarray(np.full((299, 299), value, np.uint8)).save(path, compress_level=0)


def _aged(stamp: list[int]) -> list[int]:
    """The stamp as if the file had been read long after its last change."""
    return stamp[:5] + [stamp[5] + 10 * RECENT_NS]


def _resumed(stdout: str) -> tuple[int, int, int]:
    """(reused chunks, all chunks, re-hashed sources) from the build's summary line."""
    m = re.search(r"reused (\d+)/(\d+) chunks, re-hashed (\d+) sources", stdout)
    assert m, stdout
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


@pytest.fixture(scope="module")
def small_src(tmp_path_factory) -> Path:
    """400 images (7 chunks); the victim stored uncompressed; all older than the stamp window."""
    root = tmp_path_factory.mktemp("stamps")
    src = Path(sample_tool.make_dataset(str(root), {c: 100 for c in sample_tool.FULL_COUNTS}, seed=4, workers=2))
    _stored_png(src / VICTIM, 90)
    time.sleep(RECENT_NS / 1e9 + 0.2)
    return src


def test_stamp_rule(tmp_path):
    p = tmp_path / "a.png"
    p.write_bytes(b"x" * 100)
    fresh = stamp_of(str(p))
    assert not unchanged(fresh, str(p))  # written in the same moment it was read: never trusted
    st = _aged(fresh)
    assert unchanged(st, str(p))
    mtime = os.stat(p).st_mtime_ns
    p.write_bytes(b"y" * 100)  # same size, new content
    os.utime(p, ns=(mtime, mtime))  # and the old mtime put back: ctime still moved
    assert os.stat(p).st_mtime_ns == mtime and not unchanged(st, str(p))
    q = tmp_path / "b.png"
    q.write_bytes(b"x" * 100)
    os.replace(q, p)  # another file under the same name
    assert not unchanged(st, str(p))
    assert not unchanged(None, str(p)) and not unchanged(_aged(stamp_of(str(p))), str(tmp_path / "gone"))


@pytest.mark.slow
def test_unchanged_sources_are_not_read_again(small_src, tmp_path):
    fresh = tmp_path / "fresh"
    run_cli("build", small_src, fresh, *OPTS, "--workers", "2", check=True)
    for extra, rehashed in (([], 0), (["--rehash"], 3 * 64)):
        run_dir = tmp_path / f"run{len(extra)}"
        run_dir.mkdir()
        out = run_dir / "out"
        kill_at("chunk:3", small_src, out, run_dir)
        p = run_cli("build", small_src, out, *OPTS, "--workers", "2", *extra, check=True)
        assert _resumed(p.stdout) == (3, 7, rehashed)  # --rehash reads the 192 sources of 3 chunks
        assert tree(out) == tree(fresh)


@pytest.mark.slow
@pytest.mark.parametrize("restore_mtime", [False, True])
def test_source_changed_between_kill_and_resume_is_reconverted(small_src, tmp_path, restore_mtime):
    src = tmp_path / "src"
    shutil.copytree(small_src, src)
    time.sleep(RECENT_NS / 1e9 + 0.2)  # the copies' ctime is new: let them age past the window
    out = tmp_path / "out"
    kill_at("chunk:3", src, out, tmp_path)
    victim = src / VICTIM
    before = victim.stat()
    _stored_png(victim, 200)  # same size, other pixels
    assert victim.stat().st_size == before.st_size and victim.read_bytes() != (small_src / VICTIM).read_bytes()
    if restore_mtime:
        os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))
    p = run_cli("build", src, out, *OPTS, "--workers", "2", check=True)
    assert _resumed(p.stdout) == (2, 7, 1)  # chunk 0 reconverted: its changed source was the one read
    fresh = tmp_path / "fresh"
    run_cli("build", src, fresh, *OPTS, "--workers", "2", check=True)
    assert tree(out) == tree(fresh)
