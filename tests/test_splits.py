"""Split totals follow the ratios over the whole build while every class stays stratified
(issue 9, item 2); an empty split is a note, and an error under ``--strict``."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli
from shardgen.build.split import assign_split_indices, largest_remainder
from test_cli import tiny_src


def build(src: Path, out: Path, *flags) -> tuple[dict, str]:
    p = run_cli("build", src, out, "--size", 8, "--workers", 2, "--progress", "false", *flags)
    assert p.returncode == 0, p.stderr
    return json.loads((out / "manifest.json").read_text()), p.stderr


def check_ratios(m: dict, ratios: dict[str, float], per_class: int) -> None:
    """Each split's total within 1 of ratio x N, each class's count within 1 of ratio x n_c."""
    n = sum(s["samples"] for s in m["splits"].values())
    for sp, r in ratios.items():
        assert abs(m["splits"][sp]["samples"] - r * n) <= 1, (sp, m["splits"][sp]["samples"], r * n)
        for c in m["classes"]:
            got = m["splits"][sp]["class_counts"].get(c, 0)
            assert abs(got - r * per_class) <= 1, (sp, c, got)


def test_many_two_image_classes_still_give_a_test_split(tmp_path):
    # 200 classes x 2 images, default train=0.8,test=0.2: used to be train 400 / test 0
    m, err = build(tiny_src(tmp_path / "src", classes=200, per_class=2), tmp_path / "out")
    assert [m["splits"][s]["samples"] for s in ("train", "test")] == [320, 80]
    check_ratios(m, {"train": 0.8, "test": 0.2}, 2)
    assert "note: split" not in err


def test_three_splits_on_small_classes(tmp_path):
    m, err = build(tiny_src(tmp_path / "src", classes=30, per_class=3), tmp_path / "out",
                   "--splits", "train=0.7,val=0.15,test=0.15")
    assert [m["splits"][s]["samples"] for s in ("train", "val", "test")] == largest_remainder(90, [.7, .15, .15])
    check_ratios(m, {"train": 0.7, "val": 0.15, "test": 0.15}, 3)
    assert "note: split" not in err


def test_an_empty_split_is_a_note_and_strict_fails(tmp_path):
    src = tiny_src(tmp_path / "src", classes=2, per_class=1)
    m, err = build(src, tmp_path / "out", "--splits", "train=0.7,val=0.15,test=0.15")
    assert [m["splits"][s]["samples"] for s in ("train", "val", "test")] == [2, 0, 0]
    notes = [ln for ln in err.splitlines() if ln.startswith("note: split")]
    assert notes == [
        "note: split val is empty (ratio 0.15): 0.15 of 2 usable image(s) is 0.3, which rounds to 0; "
        "use fewer splits or more images",
        "note: split test is empty (ratio 0.15): 0.15 of 2 usable image(s) is 0.3, which rounds to 0; "
        "use fewer splits or more images",
    ]
    out = tmp_path / "strict"
    p = run_cli("build", src, out, "--size", 8, "--workers", 1, "--progress", "false",
                "--splits", "train=0.7,val=0.15,test=0.15", "--strict")
    assert p.returncode == 1, p.stderr
    assert "shardgen build: error: --strict: split val is empty; split test is empty" in p.stderr
    assert (out / "manifest.json").is_file()  # written first, like --strict with skipped files


@pytest.mark.parametrize("trial", range(40))
def test_assign_splits_totals_strata_and_order(trial):
    rng = random.Random(trial)
    k = rng.choice([2, 3, 4, 5])
    cuts = sorted(rng.sample(range(1, 20), k - 1))
    ratios = [(f"s{j}", (b - a) / 20) for j, (a, b) in enumerate(zip([0] + cuts, cuts + [20]))]
    rel, lab = [], []
    for c in range(rng.randint(1, 60)):
        for i in range(rng.randint(1, 9)):
            rel.append(f"c{c}/{rng.random():.12f}.png")
            lab.append(c)
    n = len(rel)
    out = assign_splits(rel, lab, [], ratios, seed=trial)
    totals = Counter(out)
    # exactly the largest-remainder targets, so within 1 of ratio x N
    assert [totals[s] for s, _ in ratios] == largest_remainder(n, [r for _, r in ratios])
    per, n_c = Counter(zip(lab, out)), Counter(lab)
    for c in n_c:
        for s, r in ratios:
            assert abs(per[c, s] - r * n_c[c]) < 1 + 1e-9
    # listing order does not matter
    perm = list(range(n))
    rng.shuffle(perm)
    again = assign_splits([rel[i] for i in perm], [lab[i] for i in perm], [], ratios, seed=trial)
    assert again == [out[i] for i in perm]


def test_assign_splits_keeps_components_together_and_close():
    rng = random.Random(7)
    rel = [f"c{i % 20}/{i}.png" for i in range(400)]
    lab = [i % 20 for i in range(400)]
    groups = [[i, i + 20] for i in range(0, 380, 40)]  # pairs within one class
    ratios = [("train", 0.7), ("val", 0.15), ("test", 0.15)]
    out = assign_splits(rel, lab, groups, ratios, seed=1)
    assert all(out[a] == out[b] for a, b in groups)
    totals = Counter(out)
    assert all(abs(totals[s] - r * 400) <= 1 for s, r in ratios)
    perm = list(range(400))
    rng.shuffle(perm)
    inv = {p: q for q, p in enumerate(perm)}
    again = assign_splits([rel[i] for i in perm], [lab[i] for i in perm],
                          [[inv[a], inv[b]] for a, b in groups], ratios, seed=1)
    assert again == [out[i] for i in perm]


def assign_splits(relpaths, labels, together, ratios, seed):
    """The split name of each sample, from the build's one split rule."""
    return [ratios[j][0] for j in assign_split_indices(relpaths, labels, together, ratios, seed).tolist()]
