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
    res_ = d["results"]
    assert res_["resume"]["state_dict_us"] > 0 and res_["resume"]["fresh"] > 0 and "same layout at 50%" in res_["resume"]
    for k in (1, 2):  # one decode per node: the split's samples, whatever the number of ranks
        assert res_["node"][f"ranks_{k}"]["decodes"] == 96 and len(res_["node"][f"ranks_{k}"]["samples_per_s"]) == 3
    assert res_["transform"]["none"] > 0 and res_["transform"]["identity"] > 0 and res_["transform"]["seeding"]["seed_us"] > 0


def _torchrun(nproc: int, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    if nproc == 1:
        cmd = [sys.executable, str(ROOT / "tools" / "train_ddp.py"), *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(ROOT / "tools" / "train_ddp.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _trace(prefix, rank: int) -> list[dict]:
    with open(f"{prefix}.rank{rank}", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_sigkilled_ddp_run_resumes_step_for_step(five_shards, tmp_path):
    """torchrun, 2 ranks x 2 workers, 5 shards, a seeded transform: rank 0 is SIGKILLed
    mid-epoch 1 (torchrun then stops rank 1); the run restarted from the last checkpoint
    (model, optimizer, loader state) matches the uninterrupted run step for step: the
    same sample keys, image checksums and losses, bit for bit, on both ranks."""
    common = [str(five_shards), "--epochs", "2", "--workers", "2", "--batch_size", "4", "--device", "cpu",
              "--augment", "--eval_split", ""]
    full = _torchrun(2, common + ["--trace", str(tmp_path / "full")])
    assert full.returncode == 0, full.stdout + full.stderr
    ck = str(tmp_path / "ck.pt")
    # 96 samples / (4 x 2 ranks) = 12 steps per epoch; a checkpoint every 5 steps, the
    # last before the kill at step 18 is at step 15 = epoch 1, batch 3.
    killed = _torchrun(2, common + ["--trace", str(tmp_path / "killed"), "--checkpoint", ck, "--save_every", "5",
                                    "--kill_at", "18"])
    assert killed.returncode != 0 and "SIGKILL" in killed.stdout + killed.stderr
    resumed = _torchrun(2, common + ["--trace", str(tmp_path / "resumed"), "--checkpoint", ck, "--save_every", "5",
                                     "--resume"])
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out
    assert "resumed from" in out and "at epoch 1, step 15" in out
    for rank in (0, 1):
        want = {r["step"]: r for r in _trace(tmp_path / "full", rank)}
        assert sorted(want) == list(range(1, 25))
        before = _trace(tmp_path / "killed", rank)
        after = _trace(tmp_path / "resumed", rank)
        assert [r["step"] for r in after] == list(range(16, 25))
        assert all(want[r["step"]] == r for r in before + after), rank


@pytest.mark.slow
def test_train_epoch_killed_on_one_rank_resumes_on_two(five_shards, tmp_path):
    """One process is SIGKILLed mid-epoch; the run resumes under torchrun on 2 ranks:
    the rest of the epoch is the samples not yet trained on, each once, split evenly."""
    common = [str(five_shards), "--epochs", "1", "--workers", "2", "--batch_size", "4", "--device", "cpu",
              "--eval_split", "", "--checkpoint", str(tmp_path / "ck.pt"), "--save_every", "4"]
    killed = _torchrun(1, common + ["--trace", str(tmp_path / "one"), "--kill_at", "10"])
    assert killed.returncode != 0
    resumed = _torchrun(2, common + ["--trace", str(tmp_path / "two"), "--resume"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    done = [k for r in _trace(tmp_path / "one", 0) if r["step"] <= 8 for k in r["keys"]]  # up to the checkpoint
    ranks = [_trace(tmp_path / "two", r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    later = [k for recs in ranks for r in recs for k in r["keys"]]
    assert len(done) == 32 and len(later) == len(set(later))
    assert not set(done) & set(later)
    assert 96 - 8 < len(done) + len(later) <= 96  # at most the tail that cannot fill a batch on both ranks
