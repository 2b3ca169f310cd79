"""Issue 11: ``state_dict``/``load_state_dict`` (exact mid-epoch resume on the same layout,
elastic resume on another), ``balance=`` and the class counts, on real builds.

Ranks are simulated the way torchrun sets them up (``RANK``/``WORLD_SIZE``); the real
torchrun runs, with SIGKILL, are in ``test_loaders_ddp.py``.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
import xxhash

from conftest import run_cli, sample_tool

from loaders import DevicePrefetcher, UsageError, make_loader


class Shift:
    """A transform drawing from torch's default generator (as torchvision's v2 ones do)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.roll(x, shifts=int(torch.randint(-5, 6, ())), dims=-1)


@pytest.fixture(scope="module")
def five(sample_src, tmp_path_factory) -> Path:
    """96 train samples in 5 shards of 20 (no shard boundary lines up with a reader)."""
    out = tmp_path_factory.mktemp("state") / "out"
    run_cli("build", sample_src, out, "--size", "32", "--shard_size", "20", "--workers", "2",
            "--progress", "false", check=True)
    return out


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    """The COVID-19 set's class proportions (about 7.6 : 4.5 : 2.7 : 1) at 1/25 scale."""
    root = tmp_path_factory.mktemp("imb")
    counts = {"Normal": 408, "Lung_Opacity": 240, "COVID": 145, "Viral Pneumonia": 54}
    base = sample_tool.make_dataset(str(root / "src"), counts, seed=4, workers=2)
    out = root / "out"
    run_cli("build", base, out, "--size", "16", "--shard_size", "64", "--workers", "2", "--progress", "false",
            check=True)
    return out


def as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world))


def batches(loader, stop: int | None = None) -> list[tuple]:
    """``(keys, image checksum, labels)`` per batch, optionally stopping after ``stop``."""
    out = []
    for x, y, k in loader:
        out.append((tuple(k), xxhash.xxh64(x.numpy().tobytes()).hexdigest(), tuple(y.tolist())))
        if stop is not None and len(out) == stop:
            break
    return out


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_same_layout_resume_is_bitwise_the_uninterrupted_run(five, workers, mode):
    def mk():
        return make_loader(five, batch_size=5, mode=mode, num_workers=workers, with_keys=True, seed=3,
                           shuffle_buffer=40, transform=Shift())

    full = mk()
    epochs = []
    for e in (1, 2):
        full.set_epoch(e)
        epochs.append(batches(full))
    full.close()
    for stop in (1, 7, len(epochs[0]) - 1, len(epochs[0])):
        first = mk()
        first.set_epoch(1)
        part = batches(first, stop)
        state = json.loads(json.dumps(first.state_dict()))  # plain JSON values
        first.close()
        assert state["epoch"] == 1 and state["batches"] == stop and state["num_workers"] == max(1, workers)
        again = mk()
        again.load_state_dict(state)
        got = []
        for e in (1, 2):  # the usual loop: set_epoch of the state's epoch keeps the position
            again.set_epoch(e)
            got.append(batches(again))
        again.close()
        assert part + got[0] == epochs[0], stop
        assert got[1] == epochs[1]


def test_state_survives_torch_save_and_a_prefetcher_does_not_lose_its_batch_ahead(five, tmp_path):
    def mk():
        return make_loader(five, batch_size=4, num_workers=2, with_keys=True, seed=1)

    want = batches(mk())
    pre = DevicePrefetcher(mk(), "cpu", dtype=torch.float32, channels_last=False)
    seen = []
    for i, (x, y, k) in enumerate(pre):
        seen.append(tuple(k))
        if i == 4:
            torch.save({"loader": pre.state_dict()}, tmp_path / "ck.pt")
            break
    pre.loader.close()
    state = torch.load(tmp_path / "ck.pt", weights_only=True)["loader"]
    assert state["batches"] == 5  # not 6: the prefetcher's batch ahead was not handed out
    again = mk()
    again.load_state_dict(state)
    assert [b[0] for b in want] == seen + [b[0] for b in batches(again)]


def test_resume_with_bad_samples_skipped_lines_up(five, tmp_path):
    """on_error="skip": a bad sample leaves a padding sample in its place, so a resumed run
    still equals the uninterrupted one."""
    bad = tmp_path / "bad"
    import shutil

    shutil.copytree(five, bad)
    m = json.loads((bad / "manifest.json").read_text())
    shard = bad / m["splits"]["train"]["shards"][2]["path"]
    with tarfile.open(shard) as tf:
        members = [(mem, tf.extractfile(mem).read()) for mem in tf]
    with tarfile.open(shard, "w", format=tarfile.USTAR_FORMAT) as tf:
        for mem, data in members:
            if mem.name.endswith(".png") and mem.name.startswith(members[3][0].name.split(".")[0]):
                data = data[:40] + b"\0" * (len(data) - 40)  # same size: the shard's byte count is unchanged
            mem.size = len(data)
            tf.addfile(mem, io.BytesIO(data))
    # ... and the manifest says so, as a build that wrote the bad sample would have (a shard
    # that differs from its manifest is refused as a whole before any of its samples).
    m["splits"]["train"]["shards"][2]["xxh64"] = xxhash.xxh64_hexdigest(shard.read_bytes())
    (bad / "manifest.json").write_text(json.dumps(m))

    def mk():
        # No overlap: workers running on into the next epoch would count its bad sample too.
        return make_loader(bad, batch_size=6, num_workers=2, with_keys=True, on_error="skip", seed=2,
                           overlap_epochs=False)

    full = mk()
    want = batches(full)
    assert full.skipped == 1 and sum(k.count("") for k, _, _ in want) == 1
    first = mk()
    part = batches(first, 9)
    again = mk()
    again.load_state_dict(first.state_dict())
    first.close()
    assert part + batches(again) == want


@pytest.mark.parametrize("old,new", [((2, 2, 8), (1, 1, 8)), ((2, 2, 5), (3, 1, 7))])
def test_eval_resumed_on_fewer_or_more_ranks_yields_every_sample_exactly_once(five, monkeypatch, old, new):
    (w1, nw1, b1), (w2, nw2, b2) = old, new
    seen: Counter = Counter()
    states = []
    for r in range(w1):
        as_rank(monkeypatch, r, w1)
        ld = make_loader(five, batch_size=b1, mode="eval", num_workers=nw1, with_keys=True)
        for keys, _, _ in batches(ld, 2):
            seen.update(k for k in keys if k)
        states.append(ld.state_dict())
        ld.close()
    assert all(s == states[0] for s in states)  # the same on every rank
    lengths = []
    for r in range(w2):
        as_rank(monkeypatch, r, w2)
        ld = make_loader(five, batch_size=b2, mode="eval", num_workers=nw2, with_keys=True)
        ld.load_state_dict(states[0])
        got = batches(ld)
        lengths.append(len(got))
        for keys, _, labels in got:
            seen.update(k for k in keys if k)
            assert all((k == "") == (y == -100) for k, y in zip(keys, labels))
    assert len(set(lengths)) == 1
    assert len(seen) == 96 and set(seen.values()) == {1}


def test_train_resumed_on_another_layout_and_again_never_repeats_a_sample(five, monkeypatch):
    """1 rank -> 2 ranks (other batch size) -> 3 ranks: each sample at most once in the
    epoch, equal batches per rank in each phase, and at most one global batch left out."""
    seen: Counter = Counter()
    as_rank(monkeypatch, 0, 1)
    ld = make_loader(five, batch_size=8, num_workers=2, with_keys=True, seed=9)
    ld.set_epoch(4)
    for keys, _, _ in batches(ld, 3):
        seen.update(keys)
    state = ld.state_dict()
    ld.close()
    for world, bs, stop in ((2, 5, 2), (3, 4, None)):
        lengths, states = [], []
        for r in range(world):
            as_rank(monkeypatch, r, world)
            ld = make_loader(five, batch_size=bs, num_workers=2, with_keys=True, seed=9)
            ld.load_state_dict(state)
            ld.set_epoch(4)
            got = batches(ld, stop)
            lengths.append(len(got))
            for keys, _, _ in got:
                seen.update(keys)
            states.append(ld.state_dict())
            ld.close()
        assert len(set(lengths)) == 1 and all(s == states[0] for s in states)
        state = states[0]
    assert len(state["earlier"]) == 2
    assert set(seen.values()) == {1} and 96 - 3 * 4 < len(seen) <= 96


def test_a_state_from_elsewhere_is_refused_and_another_epoch_discards_it(five, sample_src, tmp_path):
    ld = make_loader(five, batch_size=4, num_workers=0, with_keys=True, seed=1)
    batches(ld, 3)
    state = ld.state_dict()
    with pytest.raises(UsageError, match="split"):
        make_loader(five, split="test", batch_size=4, num_workers=0, seed=1).load_state_dict(state)
    with pytest.raises(UsageError, match="seed"):
        make_loader(five, batch_size=4, num_workers=0, seed=2).load_state_dict(state)
    with pytest.raises(UsageError, match="mode"):
        make_loader(five, batch_size=4, mode="eval", num_workers=0, seed=1).load_state_dict(state)
    with pytest.raises(UsageError, match="not a loader state"):
        make_loader(five, batch_size=4, num_workers=0, seed=1).load_state_dict({"epoch": 1})
    with pytest.raises(UsageError, match="batches"):
        make_loader(five, batch_size=4, num_workers=0, seed=1).load_state_dict(dict(state, batches=10**6))
    other = tmp_path / "other"
    run_cli("build", sample_src, other, "--size", "32", "--shard_size", "20", "--seed", "5", "--workers", "2",
            "--progress", "false", check=True)
    with pytest.raises(UsageError, match="another build"):
        make_loader(other, batch_size=4, num_workers=0, seed=1).load_state_dict(state)
    fresh = batches(make_loader(five, batch_size=4, num_workers=0, with_keys=True, seed=1))
    again = make_loader(five, batch_size=4, num_workers=0, with_keys=True, seed=1)
    again.load_state_dict(state)
    again.set_epoch(0)  # the state's epoch: kept
    assert len(batches(again)) == len(fresh) - 3
    again.load_state_dict(state)
    again.set_epoch(1)  # another epoch: discarded
    assert len(batches(again)) == len(fresh)


@pytest.mark.parametrize("world,workers", [(1, 0), (2, 2), (3, 1)])
def test_class_balance_evens_out_the_imbalanced_set(imbalanced, monkeypatch, world, workers):
    labels_seen: Counter = Counter()
    keys_seen: Counter = Counter()
    lengths = set()
    for r in range(world):
        as_rank(monkeypatch, r, world)
        ld = make_loader(imbalanced, batch_size=16, num_workers=workers, with_keys=True, balance="class", seed=7)
        ld.set_epoch(1)
        n = 0
        for x, y, k in ld:
            labels_seen.update(y.tolist())
            keys_seen.update(k)
            n += 1
        lengths.add((n, len(ld)))
        counts = ld.class_counts
    (n, length), = lengths
    plain = make_loader(imbalanced, batch_size=16, num_workers=0, seed=7)
    assert n == length == len(plain)  # the epoch keeps its length (same world size: RANK/WORLD_SIZE still set)
    assert sum(counts.values()) == n * 16 * world  # every slot of every batch is a real sample
    assert [counts[c] for c in ld.classes] == [labels_seen[i] for i in range(4)]  # the report is what came out
    assert max(counts.values()) <= 1.1 * min(counts.values())
    vp = ld.classes.index("Viral Pneumonia")
    assert labels_seen[vp] > 3 * 40 and max(keys_seen.values()) >= 3  # the small class repeats


def test_class_weights_and_bad_balance_values(imbalanced):
    ld = make_loader(imbalanced, batch_size=16, num_workers=0, seed=1,
                     balance={"COVID": 1, "Lung_Opacity": 1, "Normal": 2, "Viral Pneumonia": 0})
    counts = ld.class_counts
    assert counts["Viral Pneumonia"] == 0 and abs(counts["Normal"] - 2 * counts["COVID"]) <= 2
    e0, e1 = ld.class_counts, None
    ld.set_epoch(1)
    e1 = ld.class_counts
    assert e0 == e1  # exact shares every epoch
    for bad, match in (("size", "balance must be"), ({"COVID": 1}, "no weight"), ({"Cat": 1}, "unknown"),
                       ({"COVID": -1, "Lung_Opacity": 1, "Normal": 1, "Viral Pneumonia": 1}, ">= 0")):
        with pytest.raises(UsageError, match=match):
            make_loader(imbalanced, batch_size=16, num_workers=0, balance=bad)
    with pytest.raises(UsageError, match="train"):
        make_loader(imbalanced, batch_size=16, num_workers=0, mode="eval", balance="class")


def test_balanced_epoch_resumes_exactly(imbalanced):
    def mk():
        return make_loader(imbalanced, batch_size=16, num_workers=2, with_keys=True, balance="class", seed=3)

    want = batches(mk())
    first = mk()
    part = batches(first, 11)
    again = mk()
    again.load_state_dict(first.state_dict())
    first.close()
    assert part + batches(again) == want


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_state_round_trips_through_torch_distributed_checkpoint(five, tmp_path):
    import torch.distributed.checkpoint as dcp

    ld = make_loader(five, batch_size=4, num_workers=0, seed=1)
    it = iter(ld)
    for _ in range(3):
        next(it)
    saved = {"loader": ld.state_dict()}
    dcp.save(saved, checkpoint_id=str(tmp_path / "dcp"))
    target = {"loader": make_loader(five, batch_size=4, num_workers=0, seed=1).state_dict()}
    dcp.load(target, checkpoint_id=str(tmp_path / "dcp"))
    assert target["loader"] == saved["loader"] and target["loader"]["batches"] == 3


def test_resuming_decodes_only_the_samples_still_due(five, decode_calls):
    calls = decode_calls
    kw = dict(batch_size=4, num_workers=0, seed=1, shuffle_buffer=30, decoded_cache=None)
    first = make_loader(five, **kw)
    n = len(first)
    state = dict(first.state_dict(), batches=15)
    calls.clear()
    again = make_loader(five, **kw)
    again.load_state_dict(state)
    assert sum(1 for _ in again) == n - 15
    assert len(calls) == (n - 15) * 4  # the 60 samples already yielded were not decoded
