"""No silently wrong build (issue 24): each case a user met that exited 0 with a wrong dataset.

- a build in which every image is skipped exits 1 with one line and the commonest reasons;
- flag values reach the commands as typed (python-fire never re-parses ``['normal']``, ``1e3``,
  ``None``, ``a,b``, ``-1``, ``True``), for every string flag of every command;
- class folders that look like identifiers (patients, archive parts) give a note naming the
  CSVs at SRC's top, and ``--strict`` refuses them before any work;
- a ``--no_finding`` that matches no label cell gives a note (``--strict``: exit 1).
"""

from __future__ import annotations

import csv
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
from fire import core as fire_core
from PIL import Image

from conftest import run_cli
from shardgen.cli import CLI
from shardgen.cli.argv import check_argv
from test_multilabel import make_nih

TRICKY = ["['normal']", "1e3", "True", "a,b", "None", "-1", "{'a': 1}", "0x10", "1_000", "(1, 2)", "x=y",
          "'quoted'", 'say "hi"', " spaced ", "é"]


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    px = np.random.default_rng(seed).integers(0, 256, (24, 20), dtype=np.uint8)
    Image.fromarray(px, "L").save(path)


def _one_line(p, code: int, *wanted: str) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    err = [ln for ln in lines if ": error: " in ln]
    assert len(err) == 1, p.stderr
    for w in wanted:
        assert w in err[0], err[0]
    return err[0]


# ---- every image skipped ---------------------------------------------------------------------------

def test_a_build_that_uses_no_image_exits_1_with_the_commonest_reasons(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    for c in ("COVID", "Normal"):
        (src / c).mkdir(parents=True)
        for i in range(6):
            (src / c / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really" * i)
    p = run_cli("build", src, out, "--size", 16, "--progress", "false")
    line = _one_line(p, 1, "no image was used: 12 found, all 12 skipped", "most common reasons:",
                     "nothing was written")
    assert line.count("(") >= 1
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*/*.tar"))
    assert "images/s" not in p.stdout  # no summary of a build that did not happen


# ---- flag values as typed --------------------------------------------------------------------------

def _recorder(seen: dict):
    """A class with the real CLI's commands and signatures whose methods record what fire passes."""
    ns: dict = {"seen": seen}
    src = ["class Recorder:"]
    for name, fn in inspect.getmembers(CLI, inspect.isfunction):
        if name.startswith("_"):
            continue
        sig = inspect.signature(fn)
        src.append(f"    def {name}{sig}:\n        seen.update(locals()); seen.pop('self')")
    exec("\n".join(src), ns)  # noqa: S102 - test scaffolding from the CLI's own signatures
    return ns["Recorder"]


def _string_flags():
    for name, fn in inspect.getmembers(CLI, inspect.isfunction):
        if name.startswith("_"):
            continue
        for p in list(inspect.signature(fn).parameters.values())[1:]:
            if not isinstance(p.default, bool):
                yield name, p.name


@pytest.mark.parametrize("value", TRICKY)
def test_every_string_flag_of_every_command_reaches_it_as_typed(value):
    pairs = list(_string_flags())
    assert len(pairs) > 30  # every command's every non-boolean flag
    for command, flag in pairs:
        seen: dict = {}
        cls = _recorder(seen)
        positional = [p.name for p in list(inspect.signature(getattr(CLI, command)).parameters.values())[1:]
                      if p.default is p.empty]
        argv = [command] + ["X" for p in positional if p != flag] + [f"--{flag}", value]
        fire_core.Fire(cls, command=check_argv(CLI, argv), name="shardgen")
        assert seen[flag] == value, (command, flag, value, seen[flag])


def test_class_names_that_look_like_literals_are_selected_as_typed(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    names = ["1e3", "-1", "None", "True", "['normal']"]
    for k, c in enumerate(names):
        for i in range(4):
            _png(src / c / f"{i}.png", 10 * k + i)
    p = run_cli("build", src, out, "--classes", "1e3,-1,['normal']", "--size", 16, "--splits", "train=1",
                "--progress", "false")
    assert p.returncode == 0, p.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == ["1e3", "-1", "['normal']"]


# ---- classes that are identifiers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def nih_folder(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("nih") / "src"
    src.mkdir()
    make_nih(src, patients=8)
    return src


def test_archive_part_folders_as_classes_give_a_note_naming_the_csv(nih_folder, tmp_path):
    p = run_cli("build", nih_folder, tmp_path / "out", "--size", 16, "--progress", "false")
    assert p.returncode == 0, p.stderr
    notes = [ln for ln in p.stderr.splitlines() if ln.startswith("note: ")]
    hit = [ln for ln in notes if "look like identifiers" in ln]
    assert len(hit) == 1, p.stderr
    assert "images_001, images_002" in hit[0] and "SRC holds Data_Entry_2017.csv: did you mean --index?" in hit[0]


def test_strict_refuses_identifier_classes_before_any_work(nih_folder, tmp_path):
    out = tmp_path / "out"
    p = run_cli("build", nih_folder, out, "--size", 16, "--progress", "false", "--strict")
    _one_line(p, 1, "--strict:", "look like identifiers", "did you mean --index?")
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob("c-*.bin"))  # nothing was converted


def test_patient_folders_of_a_presplit_source_give_the_note(tmp_path):
    src = tmp_path / "CheXpert-v1.0-small"
    for split, first in (("train", 1), ("valid", 40)):
        for pid in range(first, first + 3):
            _png(src / split / f"patient{pid:05d}" / "study1" / "view1_frontal.png", pid)
    for name in ("train.csv", "valid.csv"):
        (src / name).write_text("Path,Sex\n")
    p = run_cli("build", src, tmp_path / "out", "--size", 16, "--progress", "false")
    assert "note: the 6 classes look like identifiers" in p.stderr, p.stderr
    assert "SRC holds train.csv, valid.csv: did you mean --index?" in p.stderr


def test_label_folders_give_no_identifier_note(sample_src, tmp_path):
    p = run_cli("build", sample_src, tmp_path / "out", "--size", 16, "--progress", "false")
    assert p.returncode == 0, p.stderr
    assert "identifiers" not in p.stderr


# ---- --no_finding that matches nothing -------------------------------------------------------------

def _padchest_like(root: Path) -> Path:
    rows = [("a.png", "['normal']"), ("b.png", "['cardiomegaly']"), ("c.png", "['normal']"),
            ("d.png", "['pleural effusion']")]
    for k, (name, _) in enumerate(rows):
        _png(root / name, k)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return root / "index.csv"


def test_no_finding_is_matched_literally_and_an_unmatched_one_is_a_note(tmp_path):
    src = tmp_path / "src"
    index = _padchest_like(src)
    base = ["build", src, "--index", index, "--label_sep", "|", "--size", 16, "--splits", "train=1",
            "--progress", "false"]
    p = run_cli(*base[:2], tmp_path / "a", *base[2:], "--no_finding", "['normal']")
    assert p.returncode == 0, p.stderr
    assert "--no_finding" not in p.stderr
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert m["classes"] == ["['cardiomegaly']", "['pleural effusion']"]

    p = run_cli(*base[:2], tmp_path / "b", *base[2:], "--no_finding", "normal")
    assert p.returncode == 0, p.stderr
    assert "note: --no_finding 'normal' matches no label cell" in p.stderr

    p = run_cli(*base[:2], tmp_path / "c", *base[2:], "--no_finding", "normal", "--strict")
    _one_line(p, 1, "--strict: --no_finding 'normal' matches no label cell")
    assert not (tmp_path / "c" / "manifest.json").exists()
