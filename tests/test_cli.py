"""The command line itself (issue 9, items 9 and 10): bad flags and arguments are refused
before any work, help still works, a closed pipe is a quiet exit, and ``preview`` does not
overwrite silently. Through the CLI in a subprocess, except the one unit test of the
generic checker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from shardgen.cli.argv import ArgvError, check_argv


def tiny_src(root: Path, classes: int = 2, per_class: int = 3, side: int = 8) -> Path:
    """An ImageFolder source of distinct random ``side`` x ``side`` grayscale PNGs."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c:03d}").mkdir(parents=True)
        for i in range(per_class):
            px = rng.integers(0, 256, (side, side), dtype=np.uint8)
            Image.fromarray(px, "L").save(root / f"class{c:03d}" / f"img{i}.png")
    return root


def refused(p: subprocess.CompletedProcess, line: str) -> None:
    """Exit 2 and exactly ``line`` on stderr, nothing on stdout."""
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stderr.strip() == line, p.stderr
    assert p.stdout == ""


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return tiny_src(tmp_path_factory.mktemp("tiny") / "src")


@pytest.fixture(scope="module")
def built(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "out"
    run_cli("build", src, out, "--size", 8, "--workers", 1, "--progress", "false", check=True)
    return out


def test_misspelled_flag_is_refused_before_the_build(src, tmp_path):
    out = tmp_path / "out"
    refused(run_cli("build", src, out, "--sed", 5),
            "shardgen build: error: unknown flag --sed (did you mean --seed?)")
    assert not out.exists()
    # the suggestion keeps the user's spelling
    refused(run_cli("build", src, out, "--shard-siz", 5),
            "shardgen build: error: unknown flag --shard-siz (did you mean --shard-size?)")
    refused(run_cli("build", src, out, "--no-progres"),
            "shardgen build: error: unknown flag --no-progres (did you mean --no-progress?)")
    refused(run_cli("build", src, out, "--sed=5"),
            "shardgen build: error: unknown flag --sed (did you mean --seed?)")
    assert not out.exists()


def test_flags_of_another_command_are_refused(built, tmp_path):
    refused(run_cli("stylegan", built, "--out", tmp_path / "x.zip", cwd=str(tmp_path)),
            "shardgen stylegan: error: unknown flag --out; valid: --source, --split, --dest, "
            "--uncompressed, --overwrite, --progress")
    refused(run_cli("preview", built, "--progress", "false", cwd=str(tmp_path)),
            "shardgen preview: error: unknown flag --progress; valid: --source, --split, --per_class, "
            "--out, --thumb, --overwrite")
    assert list(tmp_path.iterdir()) == []  # no x.zip, no preview.png


def test_extra_missing_and_malformed_arguments(src, tmp_path):
    out = tmp_path / "out"
    refused(run_cli("info", "a", "b"),
            "shardgen info: error: unexpected argument b (shardgen info takes SOURCE; "
            "other values go with a --flag)")
    # fire would have taken 128 as --size; flags with a default are flags only
    refused(run_cli("build", src, out, "128"),
            "shardgen build: error: unexpected argument 128 (shardgen build takes SRC OUT; "
            "other values go with a --flag)")
    refused(run_cli("build", src),
            "shardgen build: error: missing argument OUT (see shardgen build --help)")
    refused(run_cli("build"),
            "shardgen build: error: missing arguments SRC OUT (see shardgen build --help)")
    refused(run_cli("build", src, out, "--seed"),
            "shardgen build: error: flag --seed needs a value (write --seed=VALUE if it starts with -)")
    refused(run_cli("build", src, out, "--nosize"),
            "shardgen build: error: flag --nosize: only true/false flags can be negated, and --size is not one")
    refused(run_cli("build", src, out, "-s", 1),
            "shardgen build: error: flag -s is ambiguous: --src, --size, --splits, --seed, --shard_size, --strict, "
            "--split_lists, --scheduler, --storage_options")
    refused(run_cli("build", src, out, "-", "x"), "shardgen build: error: unexpected argument -")
    line = run_cli("build", src, out, "--", "--sed", 5)
    assert line.returncode == 2 and "unknown flag --sed after --" in line.stderr
    # a flag's value is still checked before the build starts
    refused(run_cli("build", src, out, "--strict=maybe"),
            "shardgen build: error: --strict: expected true or false, got 'maybe'")
    assert not out.exists()


def test_unknown_command():
    refused(run_cli("buidl", "a", "b"), "shardgen: error: unknown command buidl (did you mean build?)")
    refused(run_cli("--sed", "build"),
            "shardgen: error: expected a command before --sed; commands: build, diff, export, info, preview, stylegan, "
            "upload, verify")


@pytest.mark.parametrize("args", [["--help"], ["-h"], ["--", "--help"], ["build", "--help"],
                                  ["build", "-h"], ["build", "--", "--help"], ["build", "SRC", "OUT", "--help"],
                                  ["build", "SRC", "OUT", "--sed", "5", "--help"], []])
def test_help_still_works(args, tmp_path):
    p = run_cli(*args, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    if "build" in args:
        assert "shardgen build SRC OUT" in p.stderr and "--shard_size" in p.stderr
    else:
        assert "shardgen" in p.stdout + p.stderr and "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_valid_spellings_still_work(src, tmp_path):
    out = tmp_path / "a"
    # --flag=value, hyphens for underscores, --overwrite before the positional arguments, --no-progress,
    # a flag given twice (the last one wins)
    p = run_cli("build", "--overwrite", src, out, "--size=8", "--shard-size", 2, "--seed", 1, "--seed=3",
                "--workers", 1, "--no-progress")
    assert p.returncode == 0, p.stderr
    cfg = json.loads((out / "manifest.json").read_text())["config"]
    assert (cfg["size"], cfg["shard_size"], cfg["seed"]) == (8, 2, 3)
    assert "convert" not in p.stderr  # no progress bar
    # positional arguments as flags, a one-letter flag, --noprogress, a true/false flag with its value
    out2 = tmp_path / "b"
    p = run_cli("build", "--src", src, "--out", out2, "--size", 8, "-w", 1, "--noprogress", "--overwrite", "true")
    assert p.returncode == 0, p.stderr
    p = run_cli("preview", out2, "--out", tmp_path / "p.png", "--per-class", 1, "--thumb", 8)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "p.png").is_file()


class FakeCLI:
    """Commands other helpers add in parallel: the checker needs no code for them."""

    def diff(self, a, b, json=False):
        pass

    def export(self, out, dest=None, layout="imagefolder", overwrite=False):
        pass


def test_checker_is_generic():
    assert check_argv(FakeCLI, ["diff", "A", "B", "--json"]) == ["diff", "--a='A'", "--b='B'", "--json=True"]
    assert check_argv(FakeCLI, ["export", "OUT", "--dest", "D", "--layout=imagefolder", "--no-overwrite"]) == [
        "export", "--out='OUT'", "--dest='D'", "--layout='imagefolder'", "--overwrite=False"]
    with pytest.raises(ArgvError, match=r"unknown flag --layuot \(did you mean --layout\?\)"):
        check_argv(FakeCLI, ["export", "OUT", "--layuot", "x"])
    with pytest.raises(ArgvError, match="unexpected argument C"):
        check_argv(FakeCLI, ["diff", "A", "B", "C"])
    with pytest.raises(ArgvError, match=r"unknown command dif \(did you mean diff\?\)"):
        check_argv(FakeCLI, ["dif"])


def _python_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_closed_pipe_is_a_quiet_exit(built):
    # The reader goes away after one line (``| head -1``): no traceback; exit 0 if everything
    # was already written, 141 if a write hit the closed pipe.
    cmd = [sys.executable, "-m", "shardgen", "info", str(built)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_python_env())
    assert p.stdout.readline().startswith(b"build:")
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) in (0, 141)
    assert err == ""
    # The reader is gone before the first write: always the broken pipe, always exit 141.
    r, w = os.pipe()
    os.close(r)
    try:
        q = subprocess.run(cmd, stdout=w, stderr=subprocess.PIPE, env=_python_env(), timeout=60)
    finally:
        os.close(w)
    assert q.returncode == 141 and q.stderr == b""


def test_preview_refuses_an_existing_out_unless_overwrite(built, tmp_path):
    out = tmp_path / "sheet.png"
    out.write_bytes(b"mine")
    refused(run_cli("preview", built, "--out", out),
            f"shardgen preview: error: --out {out} exists; pass --overwrite to replace it")
    assert out.read_bytes() == b"mine"
    p = run_cli("preview", built, "--out", out, "--overwrite")
    assert p.returncode == 0, p.stderr
    with Image.open(out) as im:
        assert im.format == "PNG"
    assert [f.name for f in tmp_path.iterdir()] == ["sheet.png"]  # written atomically: no temporaries left
