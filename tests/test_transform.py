"""make_loader(transform=...) (issue 11): per-sample transforms in the workers, seeded from
(seed, epoch, key) so random augmentations are reproducible across runs and worker counts,
the user's RNG untouched with num_workers=0, and clear errors for a transform that breaks
the batch layout. Real builds made by ``shardgen build`` (16x16 images).
"""

from __future__ import annotations

import io
import re
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_build

from loaders import LoaderError, UsageError, make_loader, transform_seed

S = 16


class FlipNoise:
    """A random augmentation drawing from torch's default generator (as torchvision v2 does)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x + torch.randint(0, 32, x.shape, dtype=torch.uint8)


def crop_half(x: torch.Tensor) -> torch.Tensor:
    return x[:, : x.shape[1] // 2]


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float()


def explode(x: torch.Tensor) -> torch.Tensor:
    raise ValueError("boom")


@pytest.fixture(scope="module")
def build(sample_src, tmp_path_factory) -> Path:
    """sample_src at 16x16 in 20-sample shards: train = 96 samples in 5 shards, test = 24 in 2."""
    return make_build(sample_src, tmp_path_factory.mktemp("tf") / "out", size=S, shard_size=20)


@pytest.fixture(scope="module")
def pixels(build) -> dict[str, np.ndarray]:
    """Every sample's decoded image, read with tarfile and PIL."""
    m = json.loads((build / "manifest.json").read_text())
    out = {}
    for s in m["splits"].values():
        for sh in s["shards"]:
            with tarfile.open(build / sh["path"]) as tf:
                for mem in tf:
                    key, ext = mem.name.split(".", 1)
                    if ext == "png":
                        out[key] = np.asarray(Image.open(io.BytesIO(tf.extractfile(mem).read())))
    return out


def by_key(loader, epoch: int = 0) -> tuple[list[tuple[str, ...]], dict[str, np.ndarray]]:
    """(keys of each batch, {key: image [1,S,S]}) of one epoch."""
    loader.set_epoch(epoch)
    order, images = [], {}
    for x, y, keys in loader:
        order.append(tuple(keys))
        for k, im in zip(keys, x.numpy()):
            if k:
                images[k] = im.copy()
    loader.close()
    return order, images


def expected(raw: np.ndarray, seed: int, epoch: int, key: str) -> np.ndarray:
    """FlipNoise applied to ``raw`` as the rule says: torch's generator seeded from (seed, epoch, key)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(transform_seed(seed, epoch, key))
        return FlipNoise()(torch.from_numpy(raw.copy())[None]).numpy()


def test_same_seed_gives_identical_batches_and_the_documented_draws(build, pixels, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    mk = lambda: make_loader(build, batch_size=8, num_workers=2, seed=3, with_keys=True,  # noqa: E731
                             transform=FlipNoise())
    a_order, a = by_key(mk(), epoch=1)
    b_order, b = by_key(mk(), epoch=1)
    assert a_order == b_order and len(a) == 96
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # The transform really ran, with exactly the documented seed per sample.
    for k, im in a.items():
        assert not np.array_equal(im[0], pixels[k])
        assert np.array_equal(im, expected(pixels[k], 3, 1, k)), k


def test_per_key_images_are_the_same_with_0_1_and_2_workers(build, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    runs = {}
    for w in (0, 1, 2):
        loader = make_loader(build, batch_size=8, num_workers=w, seed=5, with_keys=True, transform=FlipNoise())
        runs[w] = by_key(loader)[1]
    assert len(runs[0]) == 96
    for w in (1, 2):
        # Different worker counts give different batch orders, but the same keys (train
        # mode drops no tail here: 96 = 12 batches of 8) transformed identically.
        assert runs[w].keys() == runs[0].keys()
        assert all(np.array_equal(runs[w][k], runs[0][k]) for k in runs[0]), w
    # Eval mode too (another order again), and the padding sample stays zero, untransformed.
    ev = make_loader(build, split="test", batch_size=10, mode="eval", num_workers=2, seed=5, with_keys=True,
                     transform=FlipNoise())
    images, pads = {}, 0
    for x, y, keys in ev:
        for k, im, lab in zip(keys, x.numpy(), y.tolist()):
            if k:
                images[k] = im
            else:
                pads += 1
                assert lab == -100 and not im.any()
    assert len(images) == 24 and pads == 6
    for k, im in images.items():
        assert np.array_equal(im, expected(_raw(build, k), 5, 0, k))


def _raw(build: Path, key: str) -> np.ndarray:
    m = json.loads((build / "manifest.json").read_text())
    for s in m["splits"].values():
        for sh in s["shards"]:
            with tarfile.open(build / sh["path"]) as tf:
                try:
                    mem = tf.getmember(f"{key}.png")
                except KeyError:
                    continue
                return np.asarray(Image.open(io.BytesIO(tf.extractfile(mem).read())))
    raise KeyError(key)


def test_different_epochs_and_seeds_draw_differently_for_the_same_key(build, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    loader = make_loader(build, batch_size=8, num_workers=2, seed=0, with_keys=True, transform=FlipNoise())
    e0, e1 = by_key(loader, 0)[1], by_key(loader, 1)[1]
    other = by_key(make_loader(build, batch_size=8, num_workers=2, seed=1, with_keys=True,
                               transform=FlipNoise()), 0)[1]
    assert e0.keys() == e1.keys() == other.keys()
    assert all(not np.array_equal(e0[k], e1[k]) for k in e0)
    assert all(not np.array_equal(e0[k], other[k]) for k in e0)
    # Going back to epoch 0 repeats it exactly.
    again = by_key(loader, 0)[1]
    assert all(np.array_equal(e0[k], again[k]) for k in e0)


def test_num_workers_0_leaves_the_users_rng_unchanged(build, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    loader = make_loader(build, batch_size=8, num_workers=0, with_keys=True, transform=FlipNoise())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        want = torch.rand(4)
        torch.set_rng_state(before)
        n = sum(len(keys) for _, _, keys in loader)
        assert n == 96
        assert torch.equal(torch.get_rng_state(), before)
        assert torch.equal(torch.rand(4), want)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("fn, what", [(crop_half, r"transform returned torch\.uint8 \[1, 8, 16\], expected "
                                                   r"torch\.uint8 \[1, 16, 16\]"),
                                      (to_float, r"transform returned torch\.float32 \[1, 16, 16\]"),
                                      (explode, r"transform raised ValueError: boom")])
def test_a_transform_breaking_the_batch_raises_naming_shard_and_key(build, monkeypatch, workers, fn, what):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    m = json.loads((build / "manifest.json").read_text())
    shard = m["splits"]["test"]["shards"][0]["path"]
    test_keys = []
    for sh in m["splits"]["test"]["shards"]:
        with tarfile.open(build / sh["path"]) as tf:
            test_keys += [mem.name.split(".", 1)[0] for mem in tf if mem.name.endswith(".png")]
    # on_error="skip" is for bad data: a broken transform still raises.
    loader = make_loader(build, split="test", batch_size=4, mode="eval", num_workers=workers, on_error="skip",
                         transform=fn)
    with pytest.raises(LoaderError, match=what) as e:
        next(iter(loader))
    loader.close()
    msg = str(e.value)
    if workers == 0:  # one worker reads the first shard from its first sample
        assert msg.startswith(f"{build}/{shard}: sample {test_keys[0]}: "), msg
    else:
        hit = re.match(rf"{re.escape(str(build))}/test/[^ ]+\.tar: sample ([^ ]+): ", msg)
        assert hit and hit.group(1) in test_keys, msg


def test_bad_transform_arguments_are_usage_errors(build, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(UsageError, match="transform must be callable"):
        make_loader(build, transform=3)
    with pytest.raises(UsageError, match="transform must be picklable for 'spawn' workers"):
        make_loader(build, num_workers=1, multiprocessing_context="spawn", transform=lambda x: x)
    # fork (or no workers) needs no pickling: a lambda is fine there.
    loader = make_loader(build, batch_size=8, num_workers=0, transform=lambda x: x.flip(-1))
    assert next(iter(loader))[0].shape == (8, 1, S, S)
