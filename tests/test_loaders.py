"""loaders (issue 3): equal batches on every rank, exact-once eval, seeded epochs, bad data,
device helpers and the StyleGAN dataset, all on real builds made by ``shardgen build``.

Ranks are simulated the way torchrun sets them up (``RANK``/``WORLD_SIZE`` in the
environment); ``test_loaders_ddp.py`` runs the real thing under torchrun.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import xxhash
from PIL import Image

from conftest import run_cli

from loaders import DevicePrefetcher, LoaderError, StyleGANShards, UsageError, make_loader, to_device
from loaders.order.plan import batch_order, batches_per_rank, extra_shift, plan_slot
from loaders.read.args import parse_size


# ----------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def five_shards(sample_src, tmp_path_factory) -> Path:
    """sample_src in 20-sample shards: train = 96 samples in 5 shards, test = 24 in 2."""
    out = tmp_path_factory.mktemp("five") / "out"
    run_cli("build", sample_src, out, "--size", "64", "--shard_size", "20", "--workers", "2",
            "--progress", "false", check=True)
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["splits"]["train"]["shards"]) == 5 and m["splits"]["train"]["samples"] == 96
    return out


def read_truth(build: Path) -> dict[str, dict]:
    """Every sample of a build read with the standard library's tarfile and PIL."""
    m = json.loads((build / "manifest.json").read_text())
    out: dict[str, dict] = {}
    for split, s in m["splits"].items():
        for sh in s["shards"]:
            with tarfile.open(build / sh["path"]) as tf:
                for mem in tf:
                    key, ext = mem.name.split(".", 1)
                    data = tf.extractfile(mem).read()
                    d = out.setdefault(key, {"split": split, "shard": sh["path"]})
                    if ext == "png":
                        d["image"] = np.asarray(Image.open(io.BytesIO(data)))
                    elif ext == "cls":
                        d["label"] = int(data)
                    elif ext == "json":
                        d["class"] = json.loads(data)["class"]
    return out


@pytest.fixture(scope="module")
def truth(five_shards) -> dict[str, dict]:
    return read_truth(five_shards)


def as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def epoch_batches(loader) -> list[tuple[torch.Tensor, torch.Tensor, list[str]]]:
    return [(x, y, list(k)) for x, y, k in loader]


def check_batch_content(batches, truth, batch_size: int, size: int) -> list[str]:
    """Every batch full-sized with the right types; real samples equal to the shards; pads zero.

    Returns the keys of the real samples.
    """
    keys = []
    for x, y, k in batches:
        assert x.dtype == torch.uint8 and tuple(x.shape) == (batch_size, 1, size, size)
        assert y.dtype == torch.int64 and tuple(y.shape) == (batch_size,)
        assert len(k) == batch_size
        for i, key in enumerate(k):
            if key == "":
                assert int(y[i]) == -100 and int(x[i].abs().sum()) == 0
                continue
            t = truth[key]
            assert int(y[i]) == t["label"], key
            assert np.array_equal(x[i, 0].numpy(), t["image"]), key
            keys.append(key)
    return keys


def rewrite_member(build: Path, shard_rel: str, member: str, data: bytes) -> None:
    """Replace one member of a shard of a (copied) build and update the manifest to match,
    as a build that wrote bad data would have."""
    path = build / shard_rel
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, d in members:
            if m.name == member:
                d = data
                m.size = len(d)
            tf.addfile(m, io.BytesIO(d))
    refresh_manifest_entry(build, shard_rel)


def refresh_manifest_entry(build: Path, shard_rel: str) -> None:
    mp = build / "manifest.json"
    m = json.loads(mp.read_text())
    raw = (build / shard_rel).read_bytes()
    for s in m["splits"].values():
        for sh in s["shards"]:
            if sh["path"] == shard_rel:
                sh["bytes"], sh["xxh64"] = len(raw), xxhash.xxh64_hexdigest(raw)
    mp.write_text(json.dumps(m, indent=1))


def png_bytes(a: np.ndarray, mode: str = "L") -> bytes:
    b = io.BytesIO()
    Image.fromarray(a, mode).save(b, "PNG")
    return b.getvalue()


# ----------------------------------------------------------------------------- the plan

def test_plan_gives_equal_batches_and_exact_once_eval_for_any_layout():
    """Thousands of random layouts: shards (some empty), batch sizes, ranks, workers."""
    rng = random.Random(7)
    checked = 0
    for trial in range(1500):
        counts = [rng.choice([0, rng.randint(1, 30)]) if rng.random() < 0.1 else rng.randint(1, 30)
                  for _ in range(rng.randint(1, 9))]
        if sum(counts) == 0:
            continue
        B, W, nw, epoch = rng.randint(1, 12), rng.randint(1, 5), rng.randint(1, 4), rng.randint(0, 6)
        total = sum(counts)
        for mode in ("train", "eval"):
            L = batches_per_rank(total, B, W, mode)
            seen: Counter = Counter()
            for r in range(W):
                per_rank = 0
                for w in range(nw):
                    p = plan_slot(counts, B, r, W, w, nw, mode, seed=3, epoch=epoch)
                    assert p.real + p.pad == p.batches * B
                    assert sum(s.count for s in p.segments) == p.real
                    for s in p.segments:
                        assert 0 <= s.start < s.stop <= counts[s.shard]
                        seen.update((s.shard, i) for i in range(s.start, s.stop))
                    per_rank += p.batches
                assert per_rank == L  # the same on every rank
                order = batch_order(L, nw, extra_shift(L, nw, mode, epoch))
                assert len(order) == L and len(set(order)) == L
            everything = {(k, i) for k, n in enumerate(counts) for i in range(n)}
            if mode == "eval":
                assert set(seen) == everything and set(seen.values()) == {1}
                assert L == -(-total // (B * W))
            elif total >= B * W:
                assert set(seen.values()) == {1} and sum(seen.values()) == L * B * W
                assert L == total // (B * W)
            else:  # smaller than one global batch: one batch per rank, samples repeat
                assert L == 1 and sum(seen.values()) == B * W and set(seen) == everything
            checked += 1
    assert checked > 2500


# ----------------------------------------------------------------------------- ranks and workers

@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 2), (4, 1)])
def test_every_rank_yields_the_same_number_of_batches_and_eval_covers_each_sample_once(
        five_shards, truth, monkeypatch, world, workers):
    """5 shards, up to 3 ranks x 2 workers = 6 readers (more readers than shards)."""
    B = 7
    train_keys = {k for k, t in truth.items() if t["split"] == "train"}
    for mode in ("train", "eval"):
        per_rank, got = [], []
        for rank in range(world):
            as_rank(monkeypatch, rank, world)
            loader = make_loader(five_shards, split="train", batch_size=B, mode=mode, num_workers=workers,
                                 with_keys=True, seed=1)
            assert (loader.rank, loader.world_size) == (rank, world)
            batches = epoch_batches(loader)
            assert len(batches) == len(loader)
            per_rank.append(len(batches))
            got += check_batch_content(batches, truth, B, 64)
        assert len(set(per_rank)) == 1, per_rank
        if mode == "eval":
            assert per_rank[0] == -(-96 // (B * world))
            assert sorted(got) == sorted(train_keys)  # every sample exactly once
        else:
            assert per_rank[0] == 96 // (B * world)
            assert len(got) == len(set(got)) == per_rank[0] * B * world  # no repeats, full batches
            assert set(got) <= train_keys


def test_eval_padding_is_only_in_each_ranks_last_batch(five_shards, truth, monkeypatch):
    # test split: 24 samples; 5 per batch on 2 ranks -> 3 batches per rank, 6 pads per rank.
    for rank in range(2):
        as_rank(monkeypatch, rank, 2)
        loader = make_loader(five_shards, split="test", batch_size=5, mode="eval", num_workers=2,
                             with_keys=True)
        batches = epoch_batches(loader)
        assert len(batches) == 3
        pads = [sum(1 for k in ks if k == "") for _, _, ks in batches]
        assert pads[:-1] == [0, 0] and pads[-1] == 3, pads
        check_batch_content(batches, truth, 5, 64)


def test_torch_distributed_wins_over_the_environment(five_shards, monkeypatch):
    import torch.distributed as dist
    from loaders import world

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(20000 + random.randrange(20000)))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        assert world() == (0, 1)
        loader = make_loader(five_shards, batch_size=8, num_workers=0)
        assert (loader.rank, loader.world_size, len(loader)) == (0, 1, 12)
    finally:
        dist.destroy_process_group()
    assert world() == (1, 2)


def test_half_set_or_bad_rank_variables_are_usage_errors(five_shards, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UsageError, match="WORLD_SIZE"):
        make_loader(five_shards)
    as_rank(monkeypatch, 2, 2)
    with pytest.raises(UsageError, match="RANK=2 WORLD_SIZE=2"):
        make_loader(five_shards)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UsageError, match="not an integer"):
        make_loader(five_shards)


# ----------------------------------------------------------------------------- epochs and seeds

def keys_of(loader, epoch: int) -> list[str]:
    loader.set_epoch(epoch)
    return [k for _, _, ks in loader for k in ks]


def test_epochs_reshuffle_and_the_same_seed_and_epoch_repeat_exactly(five_shards, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    mk = lambda seed=0: make_loader(five_shards, batch_size=6, num_workers=2, with_keys=True, seed=seed)  # noqa: E731
    a = mk()
    runs = [keys_of(a, e) for e in range(3)]  # workers run on from one epoch into the next
    assert all(len(r) == 96 for r in runs)
    assert runs[0] != runs[1] and runs[1] != runs[2]
    assert sorted(runs[0]) == sorted(runs[1])  # 96 = 16 x 6: no sample dropped
    fresh = mk()
    assert keys_of(fresh, 2) == runs[2]  # started at epoch 2 = continued into epoch 2
    assert keys_of(fresh, 0) == runs[0]  # going back restarts and repeats epoch 0
    assert keys_of(mk(seed=1), 0) != runs[0]
    # The shard order changes between epochs, too (not only the buffer).
    first_shard = []
    for e in range(4):
        p = plan_slot([20, 20, 20, 20, 16], 6, 0, 1, 0, 1, "train", seed=0, epoch=e)
        first_shard.append(p.segments[0].shard)
    assert len(set(first_shard)) > 1
    # A loop left early restarts cleanly at the next epoch.
    b = mk()
    for i, _ in enumerate(b):
        if i == 2:
            break
    assert keys_of(b, 1) == runs[1]
    b.close()
    a.close()


def test_train_drops_only_the_tail_and_never_repeats(five_shards, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    loader = make_loader(five_shards, batch_size=10, num_workers=0, with_keys=True)
    dropped = []
    for e in range(4):
        ks = keys_of(loader, e)
        assert len(ks) == len(set(ks)) == 90  # 9 batches of 10 from 96
        dropped.append(96 - len(set(ks)))
    assert dropped == [6, 6, 6, 6]
    # Fewer samples than one global batch: samples repeat to fill one batch per rank.
    tiny = make_loader(five_shards, split="test", batch_size=40, num_workers=0, with_keys=True)
    ks = keys_of(tiny, 0)
    assert len(tiny) == 1 and len(ks) == 40 and len(set(ks)) == 24


# ----------------------------------------------------------------------------- bad data

def copy_build(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    return dst


def a_train_sample(build: Path, index: int = 3) -> tuple[str, str]:
    m = json.loads((build / "manifest.json").read_text())
    shard = m["splits"]["train"]["shards"][1]["path"]
    with tarfile.open(build / shard) as tf:
        names = [x.name for x in tf]
    return shard, names[index * 3].split(".")[0]


BAD = {
    "corrupt_png": (lambda key: (f"{key}.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 200), "corrupt PNG"),
    "wrong_size": (lambda key: (f"{key}.png", png_bytes(np.zeros((32, 32), np.uint8))), "image is 32x32"),
    "rgb": (lambda key: (f"{key}.png", png_bytes(np.zeros((64, 64, 3), np.uint8), "RGB")), "mode RGB"),
    "label_range": (lambda key: (f"{key}.cls", b"9"), "label 9 out of range"),
    "label_text": (lambda key: (f"{key}.cls", b"cat"), "not a decimal class index"),
    "label_huge": (lambda key: (f"{key}.cls", b"9" * 5000), "not a decimal class index"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_sample_is_an_error_naming_shard_and_key_or_a_counted_skip(five_shards, tmp_path, kind, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    b = copy_build(five_shards, tmp_path)
    shard, key = a_train_sample(b)
    member, data = BAD[kind][0](key)
    rewrite_member(b, shard, member, data)
    loader = make_loader(b, batch_size=8, mode="eval", num_workers=2)
    with pytest.raises(LoaderError) as e:
        for _ in loader:
            pass
    msg = str(e.value)
    assert shard in msg and key in msg and BAD[kind][1] in msg, msg
    assert "Traceback" not in msg

    skip = make_loader(b, batch_size=8, mode="eval", num_workers=2, with_keys=True, on_error="skip")
    batches = epoch_batches(skip)
    assert len(batches) == len(skip) == 12
    keys = [k for _, _, ks in batches for k in ks if k]
    assert key not in keys and len(keys) == 95 and skip.skipped == 1
    assert sum(1 for _, y, _ in batches for v in y.tolist() if v == -100) == 1


def test_truncated_or_shortened_shards_are_errors(five_shards, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    b = copy_build(five_shards, tmp_path)
    m = json.loads((b / "manifest.json").read_text())
    shard = m["splits"]["train"]["shards"][2]["path"]
    raw = (b / shard).read_bytes()
    (b / shard).write_bytes(raw[: len(raw) // 2])
    # Size differs from the manifest: caught before reading.
    with pytest.raises(LoaderError, match=r"shard is \d+ bytes but the manifest says"):
        for _ in make_loader(b, batch_size=8, mode="eval", num_workers=0):
            pass
    # A build whose manifest matches a cut shard: the cut is found while reading.
    refresh_manifest_entry(b, shard)
    with pytest.raises(LoaderError, match=f"{shard}: (truncated|holds fewer samples)"):
        for _ in make_loader(b, batch_size=8, mode="eval", num_workers=2):
            pass
    skip = make_loader(b, batch_size=8, mode="eval", num_workers=2, with_keys=True, on_error="skip")
    n = sum(1 for _ in skip)
    assert n == len(skip) == 12 and 0 < skip.skipped <= 20
    (b / shard).unlink()
    with pytest.raises(LoaderError, match="shard file is missing"):
        for _ in make_loader(b, batch_size=8, mode="eval", num_workers=0):
            pass


def test_usage_errors(five_shards, tmp_path, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UsageError, match="no manifest.json"):
        make_loader(tmp_path)
    with pytest.raises(UsageError, match="no split 'val'"):
        make_loader(five_shards, split="val")
    for kw, pat in [({"batch_size": 0}, "batch_size"), ({"mode": "test"}, "mode"),
                    ({"num_workers": -1}, "num_workers"), ({"on_error": "ignore"}, "on_error"),
                    ({"batch_size": 2.5}, "batch_size"),
                    ({"cache_dir": str(tmp_path / "c"), "cache_limit": "lots"}, "cache_limit")]:
        with pytest.raises(UsageError, match=pat):
            make_loader(five_shards, **kw)
    assert make_loader(five_shards / "manifest.json", num_workers=0).samples == 96
    assert make_loader(f"file://{five_shards}", num_workers=0).classes == \
        json.loads((five_shards / "classes.json").read_text())["classes"]
    assert parse_size("10GB") == 10**10 and parse_size("512MiB") == 512 * 2**20 and parse_size(4096) == 4096


# ----------------------------------------------------------------------------- device helpers

def test_to_device_normalises_and_the_prefetcher_yields_every_batch(five_shards, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    loader = make_loader(five_shards, batch_size=8, mode="eval", num_workers=2, with_keys=True)
    raw = epoch_batches(loader)
    x, y, k = to_device(raw[0], "cpu")
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    ref = raw[0][0].float() / 255 * 2 - 1
    assert torch.allclose(x.float(), ref, atol=1e-2) and torch.equal(y, raw[0][1]) and k == raw[0][2]
    x32, _, _ = to_device(raw[0], torch.device("cpu"), dtype=torch.float32, channels_last=False, mean=0.0, std=1.0)
    assert torch.allclose(x32, raw[0][0].float() / 255)
    feed = DevicePrefetcher(loader, "cpu", dtype=torch.float32)
    out = list(feed)
    assert len(out) == len(loader) == feed.batches and feed.wait_s >= 0
    for (a, b, c), (xr, yr, kr) in zip(out, raw):
        assert torch.equal(b, yr) and c == kr
        assert torch.allclose(a, xr.float() / 127.5 - 1, atol=1e-6)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` 8-bit grayscale, with one empty IDAT:
    decoding it would allocate ``width * height`` bytes before finding out it is short."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_image_sizes_are_checked_against_the_manifest_not_pillows_global_limit(five_shards, tmp_path, monkeypatch):
    """The loaders leave PIL.Image.MAX_IMAGE_PIXELS as the user set it and do not depend
    on it: a build decodes under a limit far below its image size, and an image whose
    header claims 100000 x 100000 pixels is refused before any pixel is decoded."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Image.open would refuse 64x64 (> 2 x 100)
    batches = epoch_batches(make_loader(five_shards, batch_size=8, mode="eval", num_workers=0, with_keys=True))
    assert sum(1 for _, _, ks in batches for k in ks if k) == 96
    assert Image.MAX_IMAGE_PIXELS == 100

    b = copy_build(five_shards, tmp_path)
    shard, key = a_train_sample(b)
    rewrite_member(b, shard, f"{key}.png", png_header_only(100_000, 100_000))
    with pytest.raises(LoaderError) as e:
        epoch_batches(make_loader(b, batch_size=8, mode="eval", num_workers=0, with_keys=True))
    assert shard in str(e.value) and key in str(e.value) and "image is 100000x100000" in str(e.value)
    assert Image.MAX_IMAGE_PIXELS == 100


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_workers_stop_after_an_error_even_while_the_caller_holds_it(five_shards, tmp_path, monkeypatch):
    """The workers go with the DataLoader iterator; an error handed to the caller does not
    keep it (and them) alive through its traceback."""
    import gc

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    b = copy_build(five_shards, tmp_path)
    shard, key = a_train_sample(b)
    rewrite_member(b, shard, f"{key}.cls", b"cat")
    before = _children()
    loader = make_loader(b, batch_size=8, num_workers=2)
    with pytest.raises(LoaderError) as held:
        for _ in loader:
            pass
    gc.collect()
    deadline = time.monotonic() + 20
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children() - before
    assert key in str(held.value)


# ----------------------------------------------------------------------------- StyleGAN

def test_stylegan_shards_are_endless_rank_aware_one_hot_and_can_mirror(five_shards, truth, monkeypatch):
    classes = json.loads((five_shards / "classes.json").read_text())["classes"]
    by_pixels = {t["image"].tobytes(): k for k, t in truth.items() if t["split"] == "train"}
    mirrored = {t["image"][:, ::-1].tobytes(): k for k, t in truth.items() if t["split"] == "train"}

    def take(ds, n):
        dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)
        out, it = [], iter(dl)
        while len(out) < n:
            x, c = next(it)
            assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (1, 64, 64)
            assert c.dtype == torch.float32 and tuple(c.shape[1:]) == (4,)
            assert torch.equal(c.sum(1), torch.ones(len(c)))
            out += list(zip(x, c))
        return out[:n]

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ds = StyleGANShards(five_shards, split="train")
    assert (ds.resolution, ds.num_channels, ds.label_dim, ds.has_labels, len(ds)) == (64, 1, 4, True, 96)
    assert ds.image_shape == [1, 64, 64] and ds.label_shape == [4]
    labels = json.loads((five_shards / "train" / "dataset.json").read_text())["labels"]
    for i in (0, 17, 95):
        assert ds.get_label(i).argmax() == labels[i][1] and ds.get_label(i).sum() == 1
    samples = take(ds, 250)  # more than the split: it goes on into the next epochs
    keys = [by_pixels[x[0].numpy().tobytes()] for x, _ in samples]
    for (x, c), k in zip(samples, keys):
        assert classes[int(c.argmax())] == truth[k]["class"]
    assert set(keys) == set(by_pixels.values())

    # Two ranks read disjoint halves of an epoch.
    halves = []
    for rank in range(2):
        as_rank(monkeypatch, rank, 2)
        d = StyleGANShards(five_shards, split="train")
        halves.append({by_pixels[x[0].numpy().tobytes()] for x, _ in take(d, 48)})
    assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 96

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    flip = StyleGANShards(five_shards, split="train", xflip=True, seed=5)
    assert len(flip) == 192
    kinds = Counter()
    for x, _ in take(flip, 96):
        b = x[0].numpy().tobytes()
        kinds["plain" if b in by_pixels else "mirrored" if b in mirrored else "unknown"] += 1
    assert kinds["unknown"] == 0 and kinds["plain"] > 20 and kinds["mirrored"] > 20
    nolab = StyleGANShards(five_shards, split="train", use_labels=False)
    assert nolab.label_dim == 0 and not nolab.has_labels and nolab.get_label(0).shape == (0,)


def _children() -> set[int]:
    me, out = os.getpid(), set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        out.add(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return out


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")
def test_train_workers_run_on_between_epochs_and_stop_when_the_loader_goes(five_shards, monkeypatch):
    import gc

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = _children()
    loader = make_loader(five_shards, batch_size=8, num_workers=2)
    assert sum(1 for _ in loader) == 12
    alive = _children() - before
    assert len(alive) == 2  # still there, already working on the next epoch
    loader.set_epoch(1)
    assert sum(1 for _ in loader) == 12 and _children() - before == alive  # the same processes
    del loader
    gc.collect()
    deadline = time.monotonic() + 20
    while _children() - before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _children() - before
