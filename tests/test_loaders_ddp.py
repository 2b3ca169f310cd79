"""loaders under real DistributedDataParallel: ``tools/train_ddp.py`` with
``torchrun --nproc_per_node=2`` on CPU (gloo), 2 DataLoader workers per rank, over a
5-shard split (4 readers, 5 shards: no shard boundary lines up with a reader), and the
benchmark tool's plumbing (not its timings)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, run_cli


@pytest.fixture(scope="module")
def five_shards(sample_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("five-ddp") / "out"
    run_cli("build", sample_src, out, "--size", "64", "--shard_size", "20", "--workers", "2",
            "--progress", "false", check=True)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_train_ddp_under_torchrun_two_ranks_two_workers_each(five_shards):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(ROOT / "tools" / "train_ddp.py"), str(five_shards),
           "--epochs", "2", "--workers", "2", "--batch_size", "8", "--device", "cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    # 96 train samples, 8 per batch, 2 ranks -> 6 batches per rank per epoch.
    lines = re.findall(r"rank (\d): epoch (\d): (\d+) batches \(len (\d+)\), loss ([0-9.]+)", out)
    assert sorted((r, e) for r, e, *_ in lines) == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")], out
    assert all(n == "6" and ln == "6" for _, _, n, ln, _ in lines), lines
    assert "batches per epoch on each rank: [[6, 6], [6, 6]] -> equal" in out
    # 24 test samples over 2 ranks, 8 per batch: 2 batches each (the last padded), each sample once.
    assert "eval 'test': 24 of 24 samples, each exactly once across 2 rank(s); batches per rank [2, 2]" in out


def test_bench_loader_runs_every_pipeline_on_the_same_shards(five_shards, tmp_path):
    res = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_loader.py"), "--source", str(five_shards),
                        "--workers", "1", "--batch_size", "8", "--seconds", "0.2", "--rounds", "1",
                        "--work", str(tmp_path / "work"), "--json", str(res)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "96 samples in 5 shards, 64x64" in p.stdout
    d = json.loads(res.read_text())
    assert set(d["results"]) >= {"ceiling", "make_loader", "webdataset", "files"}
    for name in ("ceiling", "make_loader", "webdataset", "files"):
        r = d["results"][name]
        assert r["samples"] > 0 and r["samples_per_s"] > 0 and r["cpu_us_per_sample"] > 0, (name, r)
    assert d["results"]["make_loader"]["samples"] % 8 == 0
    assert len(list((tmp_path / "work").rglob("*.png"))) == 96  # one file per sample for "files"
    assert re.search(r"make_loader / ceiling +=", p.stdout) and re.search(r"make_loader / webdataset =", p.stdout)
