"""Byte-identical output (issue 15): the PNG encoder across processes, and a kill/resume cycle.

tools/stress_determinism.py runs the same checks at scale (100+ kill/resume cycles);
tests/test_resume.py kills builds at chosen points (chunks, shards, manifest).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli, sample_tool
import stress_determinism as stress
from shardgen.imaging.image import encode_png, encoder_info

OPTS = ["--size", "64", "--shard_size", "40", "--progress", "false"]


def test_encoder_is_libdeflate_and_lossless():
    info = encoder_info()
    assert info["name"] == "libdeflate" and info["level"] == 1 and info["filter"] == "up"
    assert info["version"] != "unknown" and info["binding"].startswith("deflate ")
    a = stress.sample_arrays(1, 256)[0]
    png = encode_png(a)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), a)
    # The IDAT is a plain zlib stream of the Up-filtered rows (each row minus the one above).
    idat = png[8 + 25 + 8:-12 - 4]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(256, 257)
    assert (raw[:, 0] == 2).all()
    assert np.array_equal(raw[0, 1:], a[0]) and np.array_equal(raw[1:, 1:], a[1:] - a[:-1])


def test_encoder_output_is_identical_across_processes_with_different_heap_histories():
    n = 24
    want = stress.heap_child_digests(0, n, 256)
    assert len(set(want)) == n
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k, perturb in enumerate([None, "1", "170", None, "255"]):
        e = dict(env)
        if perturb:
            e["MALLOC_PERTURB_"] = perturb  # glibc fills malloc'ed and freed memory with this byte
        code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'tools')!r}); import stress_determinism as s; "
                f"print(json.dumps(s.heap_child_digests({k + 1}, {n}, 256)))")
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, check=True)
        assert json.loads(p.stdout) == want, f"process {k} (MALLOC_PERTURB_={perturb}) encoded differently"


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("det")
    return Path(sample_tool.make_dataset(str(root), {c: 100 for c in sample_tool.FULL_COUNTS}, seed=5, workers=2))


def test_kill_and_resume_is_byte_identical_to_an_uninterrupted_build(src, tmp_path):
    ref = tmp_path / "ref"
    run_cli("build", src, ref, *OPTS, "--workers", "3", check=True)
    m = json.loads((ref / "manifest.json").read_text())
    assert m["image"]["encoder"] == encoder_info() == m["config"]["encoder"]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shardgen", "build", str(src), str(out), *OPTS, "--workers", "2"]
    # SIGKILL the process group once 3 of the 7 chunks are converted.
    assert stress.kill_build(cmd, str(out), after_chunks=3)
    assert (out / ".shardgen-work").is_dir() and not (out / "manifest.json").exists()
    p = run_cli("build", src, out, *OPTS, "--workers", "1", check=True)
    assert "reused" in p.stdout
    assert stress.compare_trees(str(ref), str(out)) is None
    # The comparison does see a difference.
    shard = out / m["splits"]["train"]["shards"][0]["path"]
    data = bytearray(shard.read_bytes())
    data[700] ^= 1
    shard.write_bytes(bytes(data))
    assert stress.compare_trees(str(ref), str(out)) == f"{m['splits']['train']['shards'][0]['path']} differs"


def test_resume_with_another_encoder_is_refused(src, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "shardgen", "build", str(src), str(out), *OPTS, "--workers", "1"]
    assert stress.kill_build(cmd, str(out), after_chunks=2)
    cfg = out / ".shardgen-work" / "config.json"
    old = json.loads(cfg.read_text())
    old["encoder"] = dict(old["encoder"], name="isal", version="2.31", level=1)
    cfg.write_text(json.dumps(old))
    p = run_cli("build", src, out, *OPTS)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "different config: encoder (was" in p.stderr and '"isal"' in p.stderr and "--overwrite" in p.stderr
    run_cli("build", src, out, *OPTS, "--overwrite", check=True)
    assert json.loads((out / "manifest.json").read_text())["config"]["encoder"] == encoder_info()
