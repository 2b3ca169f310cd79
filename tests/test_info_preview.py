"""``shardgen info`` and ``shardgen preview`` on real builds made through the CLI."""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import run_cli
from shardgen.commands.preview import PAD, tile_origin


def manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def shard_images(b: Path, split: str) -> list[tuple[int, np.ndarray]]:
    """(label, pixels) of every sample of ``split`` in shard order, read with the stdlib's tarfile."""
    out = []
    for sh in manifest(b)["splits"][split]["shards"]:
        with tarfile.open(b / sh["path"]) as t:
            members = {m.name: t.extractfile(m).read() for m in t.getmembers()}
            keys = list(dict.fromkeys(n.split(".", 1)[0] for n in members))
            for k in keys:
                out.append((int(members[f"{k}.cls"]), np.asarray(Image.open(io.BytesIO(members[f"{k}.png"])))))
    return out


def test_info_table_matches_manifest(small_build):
    p = run_cli("info", small_build)
    assert p.returncode == 0, p.stderr
    m = manifest(small_build)
    text = p.stdout
    splits = list(m["splits"])
    header = next(ln for ln in text.splitlines() if ln.startswith("samples"))
    assert header.split() == ["samples"] + splits + ["all"]
    for c in m["classes"]:
        row = next(ln for ln in text.splitlines() if ln.startswith(c + " ") and re.search(r"\d\s*$", ln))
        nums = [int(x.replace(",", "")) for x in row[len(c):].split()]
        want = [m["splits"][s]["class_counts"][c] for s in splits]
        assert nums == want + [sum(want)]
    shards_row = next(ln for ln in text.splitlines() if ln.startswith("shards "))
    assert [int(x) for x in shards_row.split()[1:]] == [len(m["splits"][s]["shards"]) for s in splits] + [5]
    assert next(ln for ln in text.splitlines() if ln.startswith("bytes "))
    assert "image:   64x64 L png" in text
    assert "skipped: 0" in text
    assert "config:" in text and re.search(r"shard_size\s+25", text)


def test_info_json(small_build):
    p = run_cli("info", small_build, "--json", "true")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    m = manifest(small_build)
    assert d["classes"] == m["classes"]
    for s, v in m["splits"].items():
        assert d["splits"][s]["samples"] == v["samples"]
        assert d["splits"][s]["shards"] == len(v["shards"])
        assert d["splits"][s]["bytes"] == sum(sh["bytes"] for sh in v["shards"])
    assert d["image"] == m["image"]  # size, mode, ext and the PNG encoder that made the bytes
    assert d["image"]["size"] == 64 and d["image"]["encoder"]["name"] == "libdeflate"


def test_info_counts_skips_by_reason(hostile_src, tmp_path):
    out = tmp_path / "h"
    run_cli("build", hostile_src, out, "--size", "32", "--workers", "2", "--progress", "false", check=True)
    p = run_cli("info", out)
    assert p.returncode == 0, p.stderr
    skipped = manifest(out)["skipped"]
    assert skipped >= 5
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("skipped:"))
    assert line.startswith(f"skipped: {skipped} (") and "see skipped.jsonl" in line
    assert sum(int(n) for n in re.findall(r"(\d+) [a-z]", line.split("(", 1)[1])) == skipped


def test_info_errors_are_one_line(tmp_path):
    p = run_cli("info", tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "manifest.json" in p.stderr


def test_preview_grid_size_and_tiles(small_build, tmp_path):
    out = tmp_path / "sheet.png"
    per_class = 5
    p = run_cli("preview", small_build, "--split", "train", "--per_class", per_class, "--out", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {out} (")
    m = manifest(small_build)
    classes = m["classes"]
    im = Image.open(out)
    assert im.format == "PNG"
    thumb = 64  # the image size (<= 128) by default
    w, h = map(int, re.search(r"\((\d+)x(\d+):", p.stdout).groups())
    assert im.size == (w, h)
    assert h == len(classes) * (thumb + PAD) + PAD
    label_width = w - (per_class * (thumb + PAD) + PAD)
    assert 40 < label_width < 200  # a label column wide enough for the names, nothing more
    # Every tile is the corresponding image of the split, in shard order, per class.
    sheet = np.asarray(im.convert("L"))
    firsts: dict[int, list[np.ndarray]] = {i: [] for i in range(len(classes))}
    for label, a in shard_images(small_build, "train"):
        if len(firsts[label]) < per_class:
            firsts[label].append(a)
    for r in range(len(classes)):
        for c in range(per_class):
            x, y = tile_origin(label_width, thumb, r, c)
            assert np.array_equal(sheet[y:y + thumb, x:x + thumb], firsts[r][c]), (r, c)
    # the label column has text in every row
    for r in range(len(classes)):
        y = PAD + r * (thumb + PAD)
        assert sheet[y:y + thumb, :label_width].max() > 128


def test_preview_short_rows_and_smaller_tiles(small_build, tmp_path):
    out = tmp_path / "p.png"
    p = run_cli("preview", small_build, "--split", "test", "--per_class", 9, "--thumb", 32, "--out", out)
    assert p.returncode == 0, p.stderr
    counts = manifest(small_build)["splits"]["test"]["class_counts"]
    assert all(n < 9 for n in counts.values())
    assert "fewer than 9 in split" in p.stdout
    im = Image.open(out)
    assert im.size[1] == 4 * (32 + PAD) + PAD
    label_width = im.size[0] - (9 * (32 + PAD) + PAD)
    sheet = np.asarray(im)
    # an empty tile is flat; a filled one is not
    first_cls = manifest(small_build)["classes"][0]
    x, y = tile_origin(label_width, 32, 0, counts[first_cls])
    assert np.ptp(sheet[y:y + 32, x:x + 32]) == 0
    x, y = tile_origin(label_width, 32, 0, 0)
    assert np.ptp(sheet[y:y + 32, x:x + 32]) > 0


def test_preview_default_out_and_errors(small_build, tmp_path):
    p = run_cli("preview", small_build, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "preview.png").is_file() and "wrote preview.png" in p.stdout
    p = run_cli("preview", small_build, "--split", "nope", "--out", tmp_path / "x.png")
    assert p.returncode == 2 and "no split 'nope'" in p.stderr and "Traceback" not in p.stderr
    p = run_cli("preview", small_build, "--out", tmp_path / "missing" / "x.png")
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_preview_names_a_broken_shard(small_build, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(small_build, b)
    rel = manifest(b)["splits"]["train"]["shards"][0]["path"]
    (b / rel).unlink()
    p = run_cli("preview", b, "--out", tmp_path / "x.png")
    assert p.returncode == 1 and rel in p.stderr and "missing" in p.stderr and "Traceback" not in p.stderr
