"""``StyleGANShards`` with the decoded cache (issue 13): the endless GAN stream (images,
labels, flips) is bitwise the same with the cache on and off, for single- and multi-label
builds, with and without DataLoader workers; every pass after the first decodes nothing;
the cache off writes no files; bad ``decoded_cache`` values are refused before any work.
Builds are real ``shardgen build`` outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from loaders import StyleGANShards, UsageError, make_loader
from loaders.read.decoded.entry import entry_bytes

from test_multilabel import make_nih, nih_build


@pytest.fixture(autouse=True)
def alone(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture(scope="module")
def multilabel_build(tmp_path_factory) -> Path:
    """An NIH-style multi-label build (32x32, 10 samples per shard)."""
    root = tmp_path_factory.mktemp("nih-sg")
    (root / "src").mkdir()
    make_nih(root / "src", patients=16)
    nih_build(root / "src", root / "out")
    return root / "out"


def split_samples(build: Path, split: str = "train") -> int:
    return json.loads((build / "manifest.json").read_text())["splits"][split]["samples"]


def take(ds: StyleGANShards, n: int, workers: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` samples of the stream (through a DataLoader with ``workers``), as
    ``uint8 [n,1,S,S]`` images and ``float32 [n,C]`` labels."""
    it = iter(torch.utils.data.DataLoader(ds, batch_size=8, num_workers=workers))
    xs, cs, got = [], [], 0
    while got < n:
        x, c = next(it)
        xs.append(x.numpy().copy())
        cs.append(c.numpy().copy())
        got += len(x)
    del it  # stops the workers
    return np.concatenate(xs)[:n], np.concatenate(cs)[:n]


def entries(place: Path) -> list[str]:
    return sorted(p.name for p in place.glob("*.dec"))


# ----------------------------------------------------------------------------- same stream

@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["single", "multi"])
def test_the_stream_is_bitwise_the_same_with_and_without_the_cache(small_build, multilabel_build, tmp_path,
                                                                   kind, workers):
    build = small_build if kind == "single" else multilabel_build
    n = max(300, 3 * split_samples(build) + 5)  # three passes over the split or more

    def stream(cache):
        return take(StyleGANShards(build, xflip=True, seed=3, shuffle_buffer=50, decoded_cache=cache), n, workers)

    ref_x, ref_c = stream(None)
    place = tmp_path / "dec"
    for _ in range(2):  # the first run fills the cache, the second is served from it
        x, c = stream(place)
        assert x.shape == ref_x.shape and c.shape == ref_c.shape
        assert np.array_equal(c, ref_c)
        for i in range(n):
            assert np.array_equal(x[i], ref_x[i]), i
    shards = json.loads((build / "manifest.json").read_text())["splits"]["train"]["shards"]
    assert len(entries(place)) == len(shards)
    assert all(e.endswith("m.dec" if kind == "multi" else "c.dec") for e in entries(place))
    mirrored = sum(not np.array_equal(a, b) for a, b in zip(ref_x, ref_x[:, :, :, ::-1]))
    assert mirrored > 0  # flips are part of what was compared
    if kind == "multi":
        assert (ref_c.sum(1) != 1).any()  # multi-hot (and no-finding) rows, not one-hot


# ----------------------------------------------------------------------------- one decode

def test_every_pass_after_the_first_decodes_nothing(small_build, tmp_path, decode_calls):
    total = split_samples(small_build)
    place = tmp_path / "dec"
    ds = StyleGANShards(small_build, xflip=True, decoded_cache=place)
    it = iter(ds)
    first = [next(it) for _ in range(total)]
    assert len(decode_calls) == total  # pass 1: every sample decoded once
    later = [next(it) for _ in range(3 * total)]
    assert len(decode_calls) == total  # passes 2-4: none
    assert {x.tobytes() for x, _ in later[:total]} | {x[:, :, ::-1].tobytes() for x, _ in later[:total]} \
        >= {x.tobytes() for x, _ in first}  # the same images (up to flips) came back

    decode_calls.clear()  # another run on the node (a new dataset, a new process) finds them there
    it = iter(StyleGANShards(small_build, seed=9, decoded_cache=place))
    for _ in range(2 * total):
        next(it)
    assert decode_calls == []

    decode_calls.clear()  # the cache off: every pass decodes every sample
    it = iter(StyleGANShards(small_build, decoded_cache=None))
    for _ in range(2 * total):
        next(it)
    assert len(decode_calls) == 2 * total


def test_the_cache_is_shared_with_make_loader(small_build, tmp_path, decode_calls):
    place = tmp_path / "dec"
    loader = make_loader(small_build, batch_size=8, mode="eval", num_workers=0, decoded_cache=place)
    assert sum(len(y) for _, y in loader) == split_samples(small_build)
    decode_calls.clear()
    it = iter(StyleGANShards(small_build, decoded_cache=place))
    for _ in range(split_samples(small_build)):
        next(it)
    assert decode_calls == []


def test_a_limit_smaller_than_the_split_caches_a_prefix_and_decodes_the_rest(small_build, tmp_path,
                                                                          decode_calls):
    shards = json.loads((small_build / "manifest.json").read_text())["splits"]["train"]["shards"]
    total = split_samples(small_build)
    limit = entry_bytes(shards[0]["samples"], 64) + entry_bytes(shards[1]["samples"], 64) + 100
    place = tmp_path / "dec"
    ds = StyleGANShards(small_build, xflip=True, decoded_cache=place, decoded_cache_limit=limit)
    assert ds.spec.decoded.shards == frozenset({0, 1})
    ref = take(StyleGANShards(small_build, xflip=True, decoded_cache=None), 2 * total, 0)
    decode_calls.clear()
    got = take(ds, 2 * total, 0)
    assert np.array_equal(got[0], ref[0]) and np.array_equal(got[1], ref[1])
    cached = shards[0]["samples"] + shards[1]["samples"]
    assert len(decode_calls) == total + (total - cached)  # the second pass decodes the uncached shards only
    assert len(entries(place)) == 2


# ----------------------------------------------------------------------------- off, usage

def test_off_makes_no_files_and_the_environment_picks_the_place(small_build, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDGEN_DECODED_CACHE", str(tmp_path / "env"))
    for off in (None, False):
        ds = StyleGANShards(small_build, decoded_cache=off)
        take(ds, 30, 2)
        assert ds.spec.decoded is None
    assert not (tmp_path / "env").exists()
    ds = StyleGANShards(small_build)  # "auto": the environment's folder
    take(ds, 2 * split_samples(small_build), 0)
    assert len(entries(tmp_path / "env")) == len(ds.spec.shards)
    monkeypatch.setenv("SHARDGEN_DECODED_CACHE", "off")
    assert StyleGANShards(small_build).spec.decoded is None


def test_bad_decoded_cache_values_are_refused(small_build, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="decoded_cache must be 'auto', a folder, or None, got 3"):
        StyleGANShards(small_build, decoded_cache=3)
    with pytest.raises(UsageError, match="decoded_cache must be"):
        StyleGANShards(small_build, decoded_cache=["/tmp"])
    with pytest.raises(UsageError, match="decoded_cache .*cannot create or write"):
        StyleGANShards(small_build, decoded_cache=tmp_path / "file" / "sub")
    with pytest.raises(UsageError, match="decoded_cache_limit"):
        StyleGANShards(small_build, decoded_cache=tmp_path / "d", decoded_cache_limit="lots")
    with pytest.raises(UsageError, match="decoded_cache_limit"):  # before the manifest is read
        StyleGANShards(tmp_path / "no-build-here", decoded_cache_limit=-1)
    with pytest.raises(UsageError, match="decoded_cache must be"):
        StyleGANShards(tmp_path / "no-build-here", decoded_cache=1.5)
    assert not (tmp_path / "d").exists()
