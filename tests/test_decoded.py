"""The decoded cache (issue 13): batches bitwise the same with and without it, one decode
per sample per node (across processes and torchrun ranks), no stale or torn pixels
after a rebuilt split, a shard changed in place or a filler killed mid-sample, and a
budget smaller than the split. Builds are real ``shardgen build`` outputs."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, run_cli
from http_build_server import BuildServer

from loaders import LoaderError, UsageError, make_loader
from loaders.read.decoded.entry import DecodedEntry, entry_bytes
from loaders.read.decoded.store import DecodedStore, entry_name
from loaders.read.decoded.place import auto_places, plan_decoded
from loaders.read.spec import open_split
from loaders.read.samples import SampleReader


@pytest.fixture(scope="module")
def five_shards(sample_src, tmp_path_factory) -> Path:
    """sample_src in 20-sample shards: train = 96 samples in 5 shards, test = 24 in 2."""
    out = tmp_path_factory.mktemp("five-decoded") / "out"
    run_cli("build", sample_src, out, "--size", "64", "--shard_size", "20", "--workers", "2",
            "--progress", "false", check=True)
    return out


@pytest.fixture(autouse=True)
def alone(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def epochs_of(build, cache, workers=0, mode="train", epochs=3, **kw):
    """Every batch of ``epochs`` epochs, as ``(images, labels, keys)`` copies."""
    loader = make_loader(build, batch_size=8, mode=mode, num_workers=workers, with_keys=True,
                         decoded_cache=cache, **kw)
    out = []
    for e in range(epochs):
        loader.set_epoch(e)
        out.append([(x.clone(), y.clone(), list(k)) for x, y, k in loader])
    loader.close()
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb) > 0
        for (x1, y1, k1), (x2, y2, k2) in zip(ea, eb):
            assert k1 == k2
            assert torch.equal(y1, y2)
            assert torch.equal(x1, x2), k1


def entries(place: Path) -> list[str]:
    return sorted(p.name for p in place.glob("*.dec"))


def shards_of(build: Path, split: str = "train") -> list[dict]:
    return json.loads((build / "manifest.json").read_text())["splits"][split]["shards"]


def noisy(x: torch.Tensor) -> torch.Tensor:
    """A transform drawing from torch's generator (seeded per sample by the loader)."""
    return x.flip(-1) ^ torch.randint(0, 256, x.shape, dtype=torch.uint8)


# ----------------------------------------------------------------------------- same batches

@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_batches_are_bitwise_the_same_with_and_without_the_cache(five_shards, tmp_path, workers, mode):
    ref = epochs_of(five_shards, None, workers, mode)
    place = tmp_path / "dec"
    assert_same(epochs_of(five_shards, place, workers, mode), ref)  # filling
    assert len(entries(place)) == 5
    assert_same(epochs_of(five_shards, place, workers, mode), ref)  # served from the cache
    assert epochs_of(five_shards, None, workers, mode, epochs=1)[0][0][2] == ref[0][0][2]


def test_transforms_run_on_cached_pixels_the_same_way(five_shards, tmp_path):
    ref = epochs_of(five_shards, None, 2, transform=noisy)
    place = tmp_path / "dec"
    assert_same(epochs_of(five_shards, place, 2, transform=noisy), ref)
    assert_same(epochs_of(five_shards, place, 2, transform=noisy), ref)


def test_a_cached_segment_never_opens_its_shard(five_shards, tmp_path, monkeypatch):
    place = tmp_path / "dec"
    ref = epochs_of(five_shards, place, 0, "eval", epochs=1)  # fills every sample

    def no_open(self, shard):
        raise AssertionError(f"opened {shard.path}")

    monkeypatch.setattr(SampleReader, "_open", no_open)
    assert_same(epochs_of(five_shards, place, 0, "eval", epochs=2), ref * 2)
    assert_same(epochs_of(five_shards, place, 0, "train", epochs=2), epochs_of(five_shards, place, 0, "train", 2))


def test_a_remote_build_is_served_from_the_cache_without_reading_its_shards(five_shards, tmp_path):
    shutil.copytree(five_shards, tmp_path / "www" / "xray")
    srv = BuildServer(tmp_path / "www", tmp_path / "state")
    try:
        url = srv.url + "/xray"
        place = tmp_path / "dec"
        ref = epochs_of(five_shards, None, 2, "eval", epochs=1)
        assert_same(epochs_of(url, place, 2, "eval", epochs=1), ref)
        n = len(srv.shard_gets())
        assert n >= 5
        assert_same(epochs_of(url, place, 2, "eval", epochs=2), ref * 2)
        assert len(srv.shard_gets()) == n  # every segment came from the decoded cache
    finally:
        srv.stop()


def test_off_makes_no_files_and_the_environment_picks_the_place(five_shards, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDGEN_DECODED_CACHE", str(tmp_path / "env"))
    epochs_of(five_shards, None, 0, "eval", epochs=1)
    assert not (tmp_path / "env").exists()
    epochs_of(five_shards, "auto", 0, "eval", epochs=1)
    assert len(entries(tmp_path / "env")) == 5
    monkeypatch.setenv("SHARDGEN_DECODED_CACHE", "off")
    assert make_loader(five_shards, num_workers=0).dataset.spec.decoded is None


def test_default_places_and_leftovers_of_killed_creators(five_shards, tmp_path, monkeypatch):
    monkeypatch.delenv("SHARDGEN_DECODED_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    places = auto_places()
    assert places[-1] == str(tmp_path / "xdg" / "shardgen" / "decoded")
    if os.path.isdir("/dev/shm"):
        assert len(places) == 2 and places[0].startswith("/dev/shm/shardgen-")
    place = tmp_path / "dec"
    place.mkdir()
    old, new = place / ".tmp-host-1-x.dec", place / ".tmp-host-2-y.dec"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (1, 1))
    plan_decoded(open_split(five_shards, "train").shards, 64, 4, place)
    assert not old.exists() and new.exists()  # an hour old: its creator is gone


def test_usage_errors(five_shards, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="decoded_cache .*cannot create or write"):
        make_loader(five_shards, decoded_cache=tmp_path / "file" / "sub")
    with pytest.raises(UsageError, match="decoded_cache_limit"):
        make_loader(five_shards, decoded_cache=tmp_path / "d", decoded_cache_limit="lots")
    with pytest.raises(UsageError, match="decoded_cache must be"):
        make_loader(five_shards, decoded_cache=3)
    with pytest.raises(UsageError, match="decoded_cache_limit"):  # before the manifest is read
        make_loader(tmp_path / "no-build-here", decoded_cache_limit=-1)


# ----------------------------------------------------------------------------- budget

def test_a_budget_smaller_than_the_split_caches_a_prefix_of_whole_shards(five_shards, tmp_path):
    shards = shards_of(five_shards)
    one = entry_bytes(shards[0]["samples"], 64)
    place = tmp_path / "dec"
    ref = epochs_of(five_shards, None, 2)
    assert_same(epochs_of(five_shards, place, 2, decoded_cache_limit=2 * one + 100), ref)
    assert_same(epochs_of(five_shards, place, 2, decoded_cache_limit=2 * one + 100), ref)
    want = sorted(f"{s['xxh64']}-{s['bytes']}-64px-4c.dec" for s in shards[:2])
    assert entries(place) == want
    # Too small for any shard: off. Another split evicts the oldest entries to fit.
    assert plan_decoded(open_split(five_shards, "train").shards, 64, 4, place, one - 1) is None
    test = open_split(five_shards, "test")
    cfg = plan_decoded(test.shards, 64, 4, place, 2 * one + 100)
    assert cfg is not None and len(cfg.shards) == 2 and len(entries(place)) == 0


# ----------------------------------------------------------------------------- one decode per node

COUNTING = """
import os, sys
sys.path.insert(0, {root!r})
import loaders.read.samples as st
fd = os.open({count!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
decode = st.decode_into
def counting(*a, **k):
    os.write(fd, b"x")
    return decode(*a, **k)
st.decode_into = counting  # DataLoader workers are forked: they count too
import torch.distributed as dist
if "WORLD_SIZE" in os.environ:
    dist.init_process_group("gloo")
from loaders import make_loader
build, place, plan = sys.argv[1:4]
for part in plan.split(","):
    mode, epochs = part.split(":")
    loader = make_loader(build, batch_size=8, mode=mode, num_workers=2, decoded_cache=place)
    for e in range(int(epochs)):
        loader.set_epoch(e)
        assert sum(1 for _ in loader) == len(loader)
    loader.close()
    if dist.is_initialized():
        dist.barrier()
print("done", flush=True)
"""


def counting_script(tmp_path: Path) -> tuple[Path, Path]:
    count = tmp_path / "decodes"
    script = tmp_path / "count.py"
    script.write_text(COUNTING.format(root=str(ROOT), count=str(count)))
    return script, count


def decodes(count: Path) -> int:
    return count.stat().st_size if count.exists() else 0


def test_another_process_reuses_the_cache_without_decoding(five_shards, tmp_path):
    script, count = counting_script(tmp_path)
    place = tmp_path / "dec"
    run = [sys.executable, str(script), str(five_shards), str(place)]
    p = subprocess.run(run + ["eval:1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert decodes(count) == 96  # every train sample once
    p = subprocess.run(run + ["train:3,eval:1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert decodes(count) == 96  # none more
    count.unlink()
    p = subprocess.run(run[:3] + [str(tmp_path / "elsewhere"), "eval:2"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr
    assert decodes(count) == 96  # a fresh cache: decoded in epoch 0 only


@pytest.mark.slow
def test_two_torchrun_ranks_fill_one_cache_once(five_shards, tmp_path):
    from test_loaders_ddp import free_port

    script, count = counting_script(tmp_path)
    place = tmp_path / "dec"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script), str(five_shards), str(place), "eval:2,train:2"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("done") == 2
    # Eval epoch 0 reads each sample once across both ranks; after that, in eval and in
    # train (where each rank reads samples the other one decoded), nothing is decoded.
    assert decodes(count) == 96
    assert len(entries(place)) == 5


# ----------------------------------------------------------------------------- safety

KILLED = """
import fcntl, os, sys, time
sys.path.insert(0, {root!r})
from loaders.read.spec import open_split
from loaders.read.decoded.store import DecodedStore
from loaders.read.decoded.place import plan_decoded
spec = open_split({build!r}, "train")
cfg = plan_decoded(spec.shards, spec.size, len(spec.classes), {place!r})
e = DecodedStore(cfg, spec.shards, spec.size, len(spec.classes), spec.local_root).entry(0)
fcntl.lockf(e.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, e._flags, os.SEEK_SET)  # as fill() does
os.pwrite(e.fd, b"\\xff" * (spec.size * spec.size // 2), e._pix)   # half of sample 0's pixels
print("filling", flush=True)
time.sleep(120)
"""


def test_a_filler_killed_mid_sample_does_not_poison_the_cache(five_shards, tmp_path):
    place = tmp_path / "dec"
    script = tmp_path / "killed.py"
    script.write_text(KILLED.format(root=str(ROOT), build=str(five_shards), place=str(place)))
    ref = epochs_of(five_shards, None, 0, "eval", epochs=1)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "filling"
        shard0 = shards_of(five_shards)[0]
        path = place / f"{shard0['xxh64']}-{shard0['bytes']}-64px-4c.dec"
        # While it holds sample 0: others decode that sample themselves, without filling it.
        assert_same(epochs_of(five_shards, place, 2, "eval", epochs=1), epochs_of(five_shards, None, 2, "eval", 1))
        e = DecodedEntry(str(path), shard0["samples"], 64)
        assert not e.ready(0, 1) and e.ready(1, shard0["samples"])
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # The kernel dropped its lock; the half-written sample was never flagged, so it is
    # decoded and filled again, then served.
    assert_same(epochs_of(five_shards, place, 0, "eval", epochs=2), ref * 2)
    assert e.ready(0, shard0["samples"])
    assert np.array_equal(e.pixels[0], ref[0][0][0][0, 0].numpy())


def test_a_rebuilt_split_is_never_served_stale_pixels(sample_src, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(sample_src, src)
    out = tmp_path / "out"
    build = ["build", src, out, "--size", "64", "--shard_size", "20", "--workers", "2", "--progress", "false"]
    run_cli(*build, check=True)
    place = tmp_path / "dec"
    before = epochs_of(out, place, 0, "eval", epochs=1)
    img = sorted(src.rglob("*.png"))[0]
    a = np.asarray(Image.open(img).convert("L"))
    Image.fromarray(255 - a).save(img)  # one image changes: its shard's checksum does
    run_cli(*build, "--overwrite", check=True)
    ref = epochs_of(out, None, 0, "eval", epochs=1)
    assert_same(epochs_of(out, place, 0, "eval", epochs=1), ref)
    assert_same(epochs_of(out, place, 0, "eval", epochs=1), ref)
    changed = [(k, i) for (x0, _, ks), (x1, _, _) in zip(before[0], ref[0]) for i, k in enumerate(ks)
               if not torch.equal(x0[i], x1[i])]
    assert len(changed) == 1
    assert len(entries(place)) == 6  # the old entry of the changed shard stays (until evicted)


def test_a_shard_changed_in_place_is_not_served_from_the_cache(five_shards, tmp_path):
    place = tmp_path / "dec"
    epochs_of(five_shards, place, 0, "eval", epochs=1)  # the original shards, all cached
    b = tmp_path / "b"
    shutil.copytree(five_shards, b)
    shard = shards_of(b)[1]["path"]
    raw = bytearray((b / shard).read_bytes())
    i = raw.index(b"IDAT") + 8
    raw[i:i + 16] = bytes(16)  # same size, same manifest: only the bytes differ
    (b / shard).write_bytes(bytes(raw))
    with pytest.raises(LoaderError, match=f"{shard}: the shard's bytes differ from the manifest"):  # verify
        epochs_of(b, place, 0, "eval", epochs=1)
    assert_same(epochs_of(five_shards, place, 0, "eval", epochs=1), epochs_of(five_shards, None, 0, "eval", 1))


def test_entries_fill_once_and_round_trip(five_shards, tmp_path):
    spec = open_split(five_shards, "train")
    cfg = plan_decoded(spec.shards, spec.size, len(spec.classes), tmp_path / "dec", "1GB")
    assert cfg.shards == frozenset(range(5))
    store = DecodedStore(cfg, spec.shards, spec.size, len(spec.classes), spec.local_root)
    e = store.entry(2)
    assert os.path.basename(e.path) == entry_name(spec.shards[2], 64, 4)
    px = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    assert not e.ready(3, 4)
    assert e.fill(3, px, 2, "COVID_COVID-1") and not e.fill(3, px * 0, 1, "x")
    out = np.zeros((64, 64), np.uint8)
    assert e.ready(3, 4) and e.copy_into(out, 3) == 2 and np.array_equal(out, px) and e.key(3) == "COVID_COVID-1"
    assert not e.fill(4, px, 0, "k" * 65)  # longer than a key slot: not cached
    other = DecodedStore(cfg, spec.shards, spec.size, len(spec.classes), spec.local_root).entry(2)
    fcntl.lockf(other.fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, other._flags + 5, os.SEEK_SET)
    assert e.fill(5, px, 0, "a")  # locks are per process: this one is ours
    assert store.entry(2) is e
