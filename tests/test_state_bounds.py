"""Issue 22: ``load_state_dict`` refuses a tampered loader state in one line, before any work.

A state is a file that anyone may have edited (it travels with checkpoints). Values no
running loader can have had (a negative or absurd world size, worker count, batch size,
epoch, yielded count, or phase list, or one inconsistent with this split's size) are a
``UsageError`` of one line, within seconds: before, ``num_workers=100000`` or
``world_size=1000000`` hung in the plan of the resumed epoch and ``batch_size=10**12``
was a ``MemoryError``.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import run_cli

from loaders import UsageError, make_loader


@pytest.fixture(scope="module")
def build(sample_src, tmp_path_factory) -> Path:
    """96 train samples in 5 shards of 20, 32x32."""
    out = tmp_path_factory.mktemp("bounds") / "out"
    run_cli("build", sample_src, out, "--size", "32", "--shard_size", "20", "--workers", "2",
            "--progress", "false", check=True)
    return out


@contextmanager
def within(seconds: int):
    """Fail (instead of hanging the test run) when the block takes longer than ``seconds``."""
    def late(*_):
        raise TimeoutError(f"load_state_dict still working after {seconds} s")

    old = signal.signal(signal.SIGALRM, late)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def refused(loader, state: dict, match: str) -> str:
    with within(20):
        with pytest.raises(UsageError, match=match) as e:
            loader.load_state_dict(state)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300, msg
    return msg


def phase(world=1, workers=1, batch=8, buffer=1000, batches=0) -> dict:
    return {"world_size": world, "num_workers": workers, "batch_size": batch, "shuffle_buffer": buffer,
            "batches": batches}


@pytest.fixture
def loader(build):
    ld = make_loader(build, batch_size=8, num_workers=0, decoded_cache=None)
    yield ld
    ld.close()


@pytest.mark.parametrize("field,value,match", [
    ("num_workers", 100_000, "num_workers must be an integer in \\[1, 1024\\], got 100000"),
    ("world_size", 1_000_000, "world_size must be an integer in \\[1, 65536\\], got 1000000"),
    ("batch_size", 10**12, "batch_size must be an integer in \\[1, 4194304\\]"),
    ("epoch", 10**30, "epoch must be an integer in \\[0, 9223372036854775807\\]"),
    ("batches", 10**15, "phase 0 yielded 1000000000000000 batches, but 96 samples make at most 12"),
    ("world_size", -4, "world_size must be an integer in \\[1, 65536\\], got -4"),
    ("num_workers", 0, "num_workers must be an integer in \\[1, 1024\\], got 0"),
    ("epoch", -1, "epoch must be an integer in \\[0, "),
    ("batches", -3, "batches must be an integer >= 0|batches must be an integer in \\[0, "),
    ("num_workers", "4\x1b[2J", "num_workers must be an integer .* got '4\\\\x1b\\[2J'"),
])
def test_a_tampered_value_is_one_line_before_any_work(loader, field, value, match):
    state = loader.state_dict()
    state[field] = value
    refused(loader, state, match)
    # The loader is unharmed: a genuine state still loads and the epoch runs.
    good = loader.state_dict()
    loader.load_state_dict(good)
    assert sum(1 for _ in loader) == len(loader)


def test_absurd_layouts_of_earlier_phases_are_refused(loader):
    state = loader.state_dict()
    # Every rank and worker of an earlier phase is planned again: 65536 x 1024 slots hung.
    refused(loader, dict(state, earlier=[phase(world=65536, workers=1024)]), "slots in the epoch's phases")
    refused(loader, dict(state, earlier=[phase(world=1000, workers=1000, batches=0)]), "slots")
    # A step of 2**21 x 4 samples is no loader's.
    refused(loader, dict(state, earlier=[phase(world=4, batch=1 << 21)]), "is more than 4194304 samples a step")


def test_a_phase_list_no_loader_writes_is_refused(loader):
    state = loader.state_dict()
    # 100,000 elastic resumes in one epoch: each one planned again (minutes, before).
    many = [phase(world=1 + k % 2, batches=0) for k in range(100_000)]
    refused(loader, dict(state, earlier=many), "earlier must be a list of fewer than 256 phases")
    # Two phases in a row on one layout: a resume on the same layout continues its phase.
    refused(loader, dict(state, earlier=[phase(world=2, batches=1), phase(world=2, batches=1)]),
            "phases 0 and 1 have the same layout")
    # More batches than this split (96 samples) makes on that layout.
    refused(loader, dict(state, earlier=[phase(world=2, batch=8, batches=7)]),
            "phase 0 yielded 7 batches, but 96 samples make at most 6 batches of 8 on 2 rank")
    refused(loader, dict(state, earlier={"not": "a list"}), "earlier must be a list")


def test_states_the_loader_writes_still_resume(build, monkeypatch):
    """The bounds refuse nothing a loader writes: an elastic chain (2 ranks x 2 workers, then
    one rank) and a same-layout state load and run."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    two = make_loader(build, batch_size=4, num_workers=2, decoded_cache=None)
    it = iter(two)
    next(it)
    next(it)
    state = two.state_dict()
    two.close()
    monkeypatch.setenv("WORLD_SIZE", "1")
    one = make_loader(build, batch_size=4, num_workers=0, decoded_cache=None)
    with within(20):
        one.load_state_dict(state)
    rest = sum(1 for _ in one)
    assert 0 < rest < len(one)
    again = make_loader(build, batch_size=4, num_workers=0, decoded_cache=None)
    again.load_state_dict(one.state_dict())
    assert sum(1 for _ in again) == 0  # the state was taken at the end of that epoch
