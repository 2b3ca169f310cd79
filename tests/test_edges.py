"""Issue 9: the folders users really have and the names that collide, end to end through the CLI."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, sample_tool

OPTS = ["--size", "16", "--shard_size", "7", "--progress", "false"]


def png(path: Path, seed: int, size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)
    Image.fromarray(a).save(path)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def samples(out: Path) -> dict[str, dict]:
    """key -> {"split", "json", "names"} over every shard (member names as in the tar)."""
    res = {}
    for split, s in manifest(out)["splits"].items():
        for sh in s["shards"]:
            with tarfile.open(out / sh["path"]) as tf:
                for m in tf.getmembers():
                    key, ext = m.name.split(".", 1)
                    d = res.setdefault(key, {"split": split, "names": []})
                    d["names"].append(m.name)
                    if ext == "json":
                        d["json"] = json.loads(tf.extractfile(m).read())
    return res


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- layouts

@pytest.fixture(scope="module")
def wrapped(tmp_path_factory) -> Path:
    """raw/COVID-19_Radiography_Dataset/<Class>/{images,masks}/ plus a README and an archive beside it."""
    raw = tmp_path_factory.mktemp("wrapped") / "raw"
    sample_tool.make_dataset(str(raw), {c: 6 for c in sample_tool.FULL_COUNTS}, seed=5, workers=1)
    (raw / "README.txt").write_text("downloaded from Kaggle\n")
    (raw / "archive.zip").write_bytes(b"PK\x03\x04 zip")
    (raw / ".DS_Store").write_bytes(b"\0")
    return raw


def test_folder_above_the_dataset_is_used_with_a_note(wrapped, tmp_path):
    p = run_cli("build", wrapped, tmp_path / "out", *OPTS, check=True)
    inner = wrapped / "COVID-19_Radiography_Dataset"
    assert f"note: using {inner}, the only folder in {wrapped}" in p.stderr
    m = manifest(tmp_path / "out")
    assert m["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert sum(s["samples"] for s in m["splits"].values()) == 24
    sources = [s["json"]["source"] for s in samples(tmp_path / "out").values()]
    assert all("/images/" in s and "masks" not in s for s in sources)
    # The same bytes as building the inner folder itself.
    run_cli("build", inner, tmp_path / "direct", *OPTS, check=True)
    assert tree(tmp_path / "out") == tree(tmp_path / "direct")


def test_kaggle_classes_at_any_depth_and_masks_never_used(tmp_path):
    src = tmp_path / "src"
    for i in range(3):
        png(src / "site-a" / "2020" / "COVID" / "images" / f"c{i}.png", i)
        png(src / "site-a" / "2020" / "COVID" / "masks" / f"c{i}.png", 100 + i)
        png(src / "site-b" / "Normal" / "images" / f"n{i}.png", 10 + i)
        png(src / "site-b" / "Normal" / "masks" / f"n{i}.png", 200 + i)
    png(src / "site-b" / "stray.png", 50)
    p = run_cli("build", src, tmp_path / "out", *OPTS, check=True)
    m = manifest(tmp_path / "out")
    assert m["classes"] == ["COVID", "Normal"]
    assert m["report"]["layout"] == "kaggle"
    got = samples(tmp_path / "out")
    assert len(got) == 6
    assert not any("masks" in s["json"]["source"] for s in got.values())
    skipped = [json.loads(x) for x in (tmp_path / "out" / "skipped.jsonl").read_text().splitlines()]
    assert skipped == [{"path": "site-b/stray.png", "reason": "image outside any class folder (no <class>/images/ above it)"}]
    assert "Traceback" not in p.stderr


def test_masks_beside_images_in_a_pre_split_source(tmp_path):
    src = tmp_path / "src"
    for sp in ("train", "test"):
        for c in ("a", "b"):
            png(src / sp / c / "images" / f"{c}.png", hash((sp, c)) % 1000)
            png(src / sp / c / "masks" / f"{c}.png", 7)
    run_cli("build", src, tmp_path / "out", *OPTS, check=True)
    got = samples(tmp_path / "out")
    assert sorted(s["json"]["source"] for s in got.values()) == [
        "test/a/images/a.png", "test/b/images/b.png", "train/a/images/a.png", "train/b/images/b.png"]


def test_single_class_is_a_note_not_a_surprise(tmp_path):
    src = tmp_path / "raw"
    for i in range(4):
        png(src / "faces" / f"{i}.png", i)
    p = run_cli("build", src, tmp_path / "out", *OPTS, check=True)
    assert manifest(tmp_path / "out")["classes"] == ["faces"]
    assert "note: the build has a single class, 'faces'" in p.stderr


def test_empty_class_folder_is_refused_unless_classes_are_named(tmp_path):
    src = tmp_path / "src"
    for c in ("a", "c"):
        for i in range(3):
            png(src / c / f"{i}.png", i + ord(c))
    (src / "b").mkdir()
    (src / "b" / "notes.txt").write_text("no images here")
    p = run_cli("build", src, tmp_path / "out", *OPTS)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"shardgen build: error: class folder {src / 'b'} holds no images; remove it, or name the classes "
        "with --classes to keep an empty class"]
    assert not (tmp_path / "out").exists()
    run_cli("build", src, tmp_path / "out", *OPTS, "--classes", "a,b,c", check=True)
    m = manifest(tmp_path / "out")
    assert m["classes"] == ["a", "b", "c"]
    assert {s["json"]["class"] for s in samples(tmp_path / "out").values()} == {"a", "c"}


def test_out_inside_src_through_a_symlink_is_refused(tmp_path):
    src = tmp_path / "src"
    for c in ("a", "b"):
        png(src / c / "x.png", ord(c))
    (tmp_path / "link").symlink_to(src)
    p = run_cli("build", src, tmp_path / "link" / "out", *OPTS)
    assert p.returncode == 2 and "must not be inside SRC" in p.stderr, p.stderr
    assert not (src / "out").exists()
    p = run_cli("build", tmp_path / "link" / "a", src, *OPTS)
    assert p.returncode == 2 and "must not be inside OUT" in p.stderr, p.stderr


def test_exif_rotated_size_is_the_displayed_size(hostile_src, tmp_path):
    run_cli("build", hostile_src, tmp_path / "out", *OPTS, "--workers", "2", check=True)
    js = {s["json"]["source"]: s["json"] for s in samples(tmp_path / "out").values()}
    rot = js["COVID/images/exif-rotated.jpg"]  # stored 300x200 with orientation 6 (90 degrees)
    assert (rot["width"], rot["height"]) == (200, 300)
    assert (js["COVID/images/wide.png"]["width"], js["COVID/images/wide.png"]["height"]) == (400, 200)


# ----------------------------------------------------------------------------- keys

@pytest.fixture(scope="module")
def colliding(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("colliding") / "src"
    long = "x" * 170
    names = {
        "a": ["x y.png", "x_y.png", "x-y.png", "CASE.png", "case.png", f"{long}1.png", f"{long}2.png", "plain.png"],
        "肺炎": ["图像.png", "写真.png"],
        "正常": ["图像.png", "写真.png"],
    }
    n = 0
    for c, files in names.items():
        for f in files:
            png(src / c / f, n)
            n += 1
    return src


def test_colliding_names_get_unique_short_keys(colliding, tmp_path):
    p = run_cli("build", colliding, tmp_path / "w1", *OPTS, "--workers", "1")
    assert p.returncode == 0, p.stderr
    got = samples(tmp_path / "w1")
    assert len(got) == 12
    keys = sorted(got)
    assert len({k.lower() for k in keys}) == 12
    assert all(len(k) <= 64 for k in keys)
    assert "a_plain" in keys  # names without a collision stay readable
    by_source = {s["json"]["source"]: k for k, s in got.items()}
    assert by_source["a/x y.png"].startswith("a_x_y-") and by_source["a/x_y.png"].startswith("a_x_y-")
    assert by_source["a/x-y.png"] == "a_x-y"
    # Deterministic: the same keys and bytes with another worker count.
    run_cli("build", colliding, tmp_path / "w2", *OPTS, "--workers", "2", check=True)
    assert tree(tmp_path / "w1") == tree(tmp_path / "w2")


def test_long_names_give_plain_ustar_headers_only(colliding, tmp_path):
    run_cli("build", colliding, tmp_path / "out", *OPTS, check=True)
    for split in manifest(tmp_path / "out")["splits"].values():
        for sh in split["shards"]:
            data = (tmp_path / "out" / sh["path"]).read_bytes()
            with tarfile.open(tmp_path / "out" / sh["path"]) as tf:
                members = tf.getmembers()
            assert all(not m.pax_headers and m.type == tarfile.REGTYPE and len(m.name) < 100 for m in members)
            # Walk the raw headers: no PAX ('x'/'g') or GNU long-name ('L'/'K') blocks.
            off = 0
            while off < len(data) and data[off:off + 512] != b"\0" * 512:
                head = data[off:off + 512]
                assert head[156:157] == b"0", head[156:157]
                assert head[257:262] == b"ustar"
                size = int(head[124:136].rstrip(b"\0 ") or b"0", 8)
                off += 512 + (size + 511) // 512 * 512


def test_index_listing_a_file_twice(colliding, tmp_path):
    idx = tmp_path / "index.csv"
    idx.write_text("path,label\na/plain.png,p\n./a/plain.png,p\na//x y.png,q\na/x_y.png,q\n", encoding="utf-8")
    p = run_cli("build", colliding, tmp_path / "out", *OPTS, "--index", idx)
    assert p.returncode == 0, p.stderr
    assert "note: --index lists 1 path(s) more than once with the same values: each used once" in p.stderr
    assert len(samples(tmp_path / "out")) == 3
    idx.write_text("path,label\na/plain.png,p\na/plain.png,q\n", encoding="utf-8")
    p = run_cli("build", colliding, tmp_path / "out2", *OPTS, "--index", idx)
    assert p.returncode == 2 and "line 3: a/plain.png is listed again with other values than on line 2" in p.stderr
    assert not (tmp_path / "out2").exists()


def test_file_names_that_are_not_utf8(tmp_path):
    src = tmp_path / "src"
    for c in ("a", "b"):
        (src / c).mkdir(parents=True)
        png(src / c / "ok.png", ord(c))
    raw = os.fsencode(str(src / "a")) + b"/caf\xe9 \xff.png"
    png(Path(os.fsdecode(raw)), 99)
    p = run_cli("build", src, tmp_path / "out", *OPTS)
    assert p.returncode == 0, p.stderr
    js = [s["json"] for s in samples(tmp_path / "out").values() if "source_raw" in s["json"]]
    assert len(js) == 1
    from urllib.parse import unquote_to_bytes

    assert js[0]["source"] == "a/caf\\xe9 \\xff.png"
    assert unquote_to_bytes(js[0]["source_raw"]) == b"a/caf\xe9 \xff.png"


def test_symlink_loops_end_with_a_note(tmp_path):
    src = tmp_path / "src"
    for c in ("a", "b"):
        for i in range(2):
            png(src / c / f"{i}.png", i + ord(c))
    (src / "a" / "loop").symlink_to(src / "a")             # one loop
    (src / "b" / "up").symlink_to(src)                      # two loops that multiply paths
    (src / "b" / "up2").symlink_to(src / "b")
    (src / "b" / "alias").symlink_to(src / "a")
    p = run_cli("build", src, tmp_path / "out", *OPTS, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "note: listed each real folder once, not following: a/loop leads back to a (symlink loop)" in p.stderr
    got = samples(tmp_path / "out")
    assert sorted(s["json"]["source"] for s in got.values()) == ["a/0.png", "a/1.png", "b/0.png", "b/1.png"]
