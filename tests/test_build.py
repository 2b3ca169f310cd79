"""End-to-end tests of ``shardgen build`` (issue 2), through the CLI in a subprocess."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
import xxhash
from PIL import Image

from conftest import run_cli, sample_tool
from shardgen.imaging.image import encoder_info

KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def read_manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def read_samples(out: Path, split: str) -> list[tuple[str, bytes, int, dict]]:
    """(key, png, cls, json) of every sample of a split, in shard order, using plain tarfile."""
    m = read_manifest(out)
    res = []
    for sh in m["splits"][split]["shards"]:
        with tarfile.open(out / sh["path"]) as tf:
            members = tf.getmembers()
            for i in range(0, len(members), 3):
                png, cls, js = members[i:i + 3]
                key = png.name.rsplit(".", 1)[0]
                assert [png.name, cls.name, js.name] == [f"{key}.png", f"{key}.cls", f"{key}.json"]
                res.append((key, tf.extractfile(png).read(), int(tf.extractfile(cls).read()),
                            json.loads(tf.extractfile(js).read())))
    return res


def tree_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def hostile_build(hostile_src, tmp_path_factory):
    out = tmp_path_factory.mktemp("hb") / "out"
    p = run_cli("build", hostile_src, out, "--size", "64", "--shard_size", "10", "--workers", "2",
                "--progress", "false")
    return hostile_src, out, p


def test_hostile_build_reports_every_bad_file_and_keeps_going(hostile_build):
    src, out, p = hostile_build
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    reasons = {s["path"]: s["reason"] for s in skipped}
    assert reasons["COVID/images/zero-byte.png"] == "zero-byte file"
    assert reasons["COVID/images/truncated.png"].startswith("truncated image")
    assert reasons["Normal/images/not-an-image.png"].startswith("not an image")
    assert reasons["Lung_Opacity/images/bomb.png"].startswith("decompression bomb")
    assert reasons["Normal/images/dangling.png"].startswith("unreadable")
    assert "not an image file" in reasons["COVID/images/notes.txt"]
    assert len(skipped) == 6
    m = read_manifest(out)
    assert m["skipped"] == 6
    assert "skipped: 6" in p.stdout


def test_manifest_format_and_stock_readers(hostile_build):
    src, out, _ = hostile_build
    m = read_manifest(out)
    assert m["format"] == "shardgen/1"
    assert m["classes"] == ["COVID", "Lung_Opacity", "Normal", "Viral Pneumonia"]
    assert m["image"] == {"size": 64, "mode": "L", "ext": "png", "encoder": encoder_info()}
    assert m["image"]["encoder"]["name"] == "libdeflate" and m["config"]["encoder"] == encoder_info()
    assert list(m["splits"]) == ["train", "test"]
    assert json.loads((out / "classes.json").read_text()) == {"classes": m["classes"]}
    # Masks and non-image files are not samples: 4 classes x 12 + 11 usable extra files.
    total = sum(s["samples"] for s in m["splits"].values())
    assert total == 4 * 12 + 11
    keys = set()
    for split, s in m["splits"].items():
        assert s["samples"] == sum(s["class_counts"].values())
        for sh in s["shards"]:
            data = (out / sh["path"]).read_bytes()
            assert re.match(rf"^{split}/{split}-\d{{6}}\.tar$", sh["path"])
            assert sh["bytes"] == len(data) and sh["xxh64"] == xxhash.xxh64_hexdigest(data)
            assert 0 < sh["samples"] <= 10
        samples = read_samples(out, split)
        assert len(samples) == s["samples"]
        assert Counter(m["classes"][c] for _, _, c, _ in samples) == {k: v for k, v in s["class_counts"].items() if v}
        for key, png, cls, meta in samples:
            assert KEY.match(key) and key not in keys
            keys.add(key)
            assert meta["class"] == m["classes"][cls]
            assert (src / meta["source"]).exists() or (src / meta["source"]).is_symlink()
            assert "/masks/" not in meta["source"]
            assert set(meta) == {"class", "source", "width", "height", "mode", "pixels"}
            im = Image.open(io.BytesIO(png))
            assert im.mode == "L" and im.size == (64, 64)
            assert meta["pixels"] == xxhash.xxh64_hexdigest(np.asarray(im).tobytes())
        # A shard's pixels_xxh64 digests its samples' keys and pixel digests, in shard order (format.py).
        pos = 0
        for sh in s["shards"]:
            part = samples[pos:pos + sh["samples"]]
            pos += sh["samples"]
            text = "".join(f"{k}\x00{meta['pixels']}\n" for k, _, _, meta in part)
            assert sh["pixels_xxh64"] == xxhash.xxh64_hexdigest(text.encode())
        # StyleGAN labels: exactly the split's samples, in shard order.
        labels = json.loads((out / split / "dataset.json").read_text())["labels"]
        assert labels == [[f"{k}.png", c] for k, _, c, _ in samples]
        # Stock webdataset with no options reads every shard.
        urls = [str(out / sh["path"]) for sh in s["shards"]]
        got = list(wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "cls", "json"))
        assert [(int(c), j["source"]) for _, c, j in got] == [(c, meta["source"]) for _, _, c, meta in samples]
        # ... and so does tar.
        for u in urls:
            listing = subprocess.run(["tar", "tf", u], capture_output=True, text=True, check=True).stdout.split()
            assert len(listing) == 3 * len([1 for x in listing if x.endswith(".png")])


def _sample_by_source(out: Path) -> dict[str, tuple]:
    m = read_manifest(out)
    res = {}
    for split in m["splits"]:
        for key, png, cls, meta in read_samples(out, split):
            res[meta["source"]] = (split, np.asarray(Image.open(io.BytesIO(png))), cls, meta)
    return res


def test_unusual_images_are_converted_properly(hostile_build):
    _, out, _ = hostile_build
    s = _sample_by_source(out)
    # 16-bit (12-bit data): rescaled, not clipped to white nor crushed to black.
    a16 = s["COVID/images/sixteen-bit.png"][1]
    assert 100 < a16.mean() < 220 and (a16 == 255).mean() < 0.05
    assert s["COVID/images/sixteen-bit.png"][3]["mode"].startswith("I")
    for rel, mode in [("Normal/images/rgba.png", "RGBA"), ("Lung_Opacity/images/palette.png", "P"),
                      ("Normal/images/cmyk.jpg", "CMYK"), ("Viral Pneumonia/images/true-color.png", "RGB")]:
        assert s[rel][3]["mode"] == mode
        assert 30 < s[rel][1].mean() < 230
    # Non-square 400x200: padded (letterbox) by default, never stretched.
    wide = s["COVID/images/wide.png"][1]
    assert wide[:14].max() == 0 and wide[-14:].max() == 0 and wide[24:40].mean() > 50
    assert (s["COVID/images/wide.png"][3]["width"], s["COVID/images/wide.png"][3]["height"]) == (400, 200)
    # EXIF orientation 6 on a 300x200 JPEG: upright it is 200 wide, 300 high -> black bars left and right.
    ex = s["COVID/images/exif-rotated.jpg"][1]
    assert ex[:, :8].max() < 8 and ex[:, -8:].max() < 8 and ex[:, 28:36].mean() > 50
    m = read_manifest(out)
    assert m["report"]["true_color"] == 1


def test_duplicates_share_a_split_and_conflicts_are_reported(hostile_build):
    _, out, p = hostile_build
    s = _sample_by_source(out)
    assert s["Lung_Opacity/images/dup-a.png"][0] == s["Lung_Opacity/images/dup-b.png"][0]
    assert s["COVID/images/conflict.png"][0] == s["Normal/images/conflict.png"][0]
    dups = [json.loads(line) for line in (out / "duplicates.jsonl").read_text().splitlines()]
    conflicts = [d for d in dups if d["label_conflict"]]
    assert len(dups) == 2 and len(conflicts) == 1
    assert conflicts[0]["classes"] == ["COVID", "Normal"]
    assert "label conflict" in p.stdout
    assert read_manifest(out)["report"]["label_conflicts"] == 1


def test_strict_fails_after_writing_the_report(hostile_src, tmp_path):
    out = tmp_path / "out"
    p = run_cli("build", hostile_src, out, "--size", "32", "--strict", "--progress", "false")
    assert p.returncode == 1
    assert "--strict: 6 file(s) skipped" in p.stderr and "Traceback" not in p.stderr
    assert (out / "manifest.json").exists() and len((out / "skipped.jsonl").read_text().splitlines()) == 6


def test_byte_identical_whatever_the_workers(sample_src, tmp_path):
    outs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        run_cli("build", sample_src, out, "--size", "32", "--shard_size", "7", "--workers", w,
                "--progress", "false", check=True)
        outs.append(tree_bytes(out))
    assert outs[0] == outs[1]
    assert len([k for k in outs[0] if k.endswith(".tar")]) >= 10


def test_splits_are_stratified_seeded_and_shuffled(sample_src, tmp_path):
    out = tmp_path / "a"
    run_cli("build", sample_src, out, "--size", "32", "--splits", "train=0.8,val=0.1,test=0.1",
            "--shard_size", "20", "--progress", "false", check=True)
    m = read_manifest(out)
    assert list(m["splits"]) == ["train", "val", "test"]
    for c in m["classes"]:
        counts = [m["splits"][s]["class_counts"][c] for s in ("train", "val", "test")]
        assert counts == [24, 3, 3]
    first = read_samples(out, "train")[:20]
    assert len({cls for _, _, cls, _ in first}) >= 3  # shuffled: shards mix classes
    out2 = tmp_path / "b"
    run_cli("build", sample_src, out2, "--size", "32", "--splits", "train=0.8,val=0.1,test=0.1",
            "--shard_size", "20", "--seed", "7", "--progress", "false", check=True)
    a = {meta["source"]: "test" for _, _, _, meta in read_samples(out, "test")}
    b = {meta["source"]: "test" for _, _, _, meta in read_samples(out2, "test")}
    assert a != b


def test_listing_order_does_not_matter(sample_src, tmp_path):
    """Copy the source in reverse order (different directory order on disk): same bytes."""
    src2 = tmp_path / "src2"
    files = sorted(p for p in sample_src.rglob("*") if p.is_file())
    for f in reversed(files):
        dst = src2 / f.relative_to(sample_src)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dst)
    outs = []
    for i, s in enumerate((sample_src, src2)):
        out = tmp_path / f"o{i}"
        run_cli("build", s, out, "--size", "32", "--progress", "false", check=True)
        outs.append(tree_bytes(out))
    assert outs[0] == outs[1]


def test_classes_order_and_subset(sample_src, tmp_path):
    out = tmp_path / "o"
    run_cli("build", sample_src, out, "--size", "32", "--classes", "Normal,COVID", "--progress", "false", check=True)
    m = read_manifest(out)
    assert m["classes"] == ["Normal", "COVID"]
    for _, _, cls, meta in read_samples(out, "train"):
        assert meta["class"] == ["Normal", "COVID"][cls]
    assert m["report"]["excluded_by_classes"] == 60


def _write_png(path: Path, seed: int, size=(40, 40)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.asarray(Image.fromarray(sample_tool.xray(seed)).resize(size))
    Image.fromarray(a).save(path)


def test_imagefolder_nested_and_group_regex(tmp_path):
    src = tmp_path / "src"
    for c in ("cat", "dog"):
        for patient in range(6):
            for view in range(3):
                _write_png(src / c / f"p{patient}" / f"{c}_patient{patient}_v{view}.png", hash((c, patient, view)) % 10**6)
    out = tmp_path / "o"
    run_cli("build", src, out, "--size", "16", "--group", r"patient(\d+)", "--splits", "train=0.5,test=0.5",
            "--progress", "false", check=True)
    m = read_manifest(out)
    assert m["report"]["layout"] == "imagefolder"
    where = {}
    for split in m["splits"]:
        for _, _, _, meta in read_samples(out, split):
            g = (meta["class"], re.search(r"patient(\d+)", meta["source"]).group(1))
            where.setdefault(g, set()).add(split)
    assert len(where) == 12 and all(len(v) == 1 for v in where.values())
    assert m["splits"]["train"]["samples"] == m["splits"]["test"]["samples"] == 18


def test_presplit_layout_is_kept(tmp_path):
    src = tmp_path / "src"
    for sp, n in (("train", 5), ("test", 2)):
        for c in ("a", "b"):
            for i in range(n):
                _write_png(src / sp / c / f"{sp}{c}{i}.png", hash((sp, c, i)) % 10**6)
    out = tmp_path / "o"
    run_cli("build", src, out, "--size", "16", "--progress", "false", check=True)
    m = read_manifest(out)
    assert m["report"]["layout"] == "split"
    assert {k: v["samples"] for k, v in m["splits"].items()} == {"test": 4, "train": 10}
    for split in m["splits"]:
        assert all(meta["source"].startswith(split + "/") for *_, meta in read_samples(out, split))
    p = run_cli("build", src, tmp_path / "o2", "--splits", "train=0.5,test=0.5", "--progress", "false")
    assert p.returncode == 2 and "already split" in p.stderr


def test_index_csv(tmp_path):
    src = tmp_path / "src"
    rows = []
    for i in range(8):
        rel = f"flat/img{i}.png"
        _write_png(src / rel, i)
        rows.append({"path": rel, "label": "pos" if i % 2 else "neg", "split": "train" if i < 6 else "test"})
    idx = tmp_path / "index.csv"
    with open(idx, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "o"
    run_cli("build", src, out, "--index", idx, "--size", "16", "--progress", "false", check=True)
    m = read_manifest(out)
    assert m["classes"] == ["neg", "pos"]
    assert {k: v["samples"] for k, v in m["splits"].items()} == {"test": 2, "train": 6}


@pytest.mark.parametrize("fit", ["pad", "crop", "stretch"])
def test_fit_modes(tmp_path, fit):
    src = tmp_path / "src"
    a = np.zeros((20, 60), np.uint8)
    a[:, 20:40] = 200  # a bright square in the middle of a wide image
    (src / "x").mkdir(parents=True)
    Image.fromarray(a).save(src / "x" / "wide.png")
    out = tmp_path / "o"
    run_cli("build", src, out, "--size", "30", "--fit", fit, "--splits", "train=1", "--progress", "false", check=True)
    (_, png, _, _), = read_samples(out, "train")
    b = np.asarray(Image.open(io.BytesIO(png))).astype(int)
    if fit == "pad":
        assert b[:8].max() == 0 and b[12:18, 12:18].min() > 150 and b[12:18, :8].max() < 10
    elif fit == "crop":
        assert b.min() > 150  # only the bright middle survives
    else:
        assert b[:, 12:18].min() > 150 and b[:, :8].max() < 10 and b[0, 15] > 150


@pytest.mark.parametrize("args,message", [
    (["build", "/nonexistent/src", "{out}"], "no such folder"),
    (["build", "{src}", "{out}", "--splits", "train=0.7,test=0.2"], "must sum to 1"),
    (["build", "{src}", "{out}", "--splits", "train"], "name=ratio"),
    (["build", "{src}", "{out}", "--classes", "COVID,Nope"], "unknown class 'Nope'"),
    (["build", "{src}", "{out}", "--fit", "squash"], "--fit must be one of"),
    (["build", "{src}", "{out}", "--size", "0"], "--size must be"),
    (["build", "{src}", "{out}", "--shard_size", "1.5"], "--shard_size"),
    (["build", "{empty}", "{out}"], "no class folders"),
    (["build", "{src}", "{foreign}"], "not a shardgen build"),
])
def test_usage_errors_are_one_line_exit_2(sample_src, tmp_path, args, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    argv = [a.format(src=sample_src, out=tmp_path / "out", empty=empty, foreign=foreign) for a in args]
    p = run_cli(*argv, "--progress", "false")
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert (foreign / "thesis.docx").read_text() == "precious"


def test_fire_routing_in_process(sample_src, tmp_path, capsys):
    import fire

    from shardgen.cli import CLI

    out = tmp_path / "o"
    fire.Fire(CLI, command=["build", str(sample_src), str(out), "--size", "16", "--seed", "001",
                            "--classes", "COVID,Normal", "--workers", "1", "--progress", "false"], name="shardgen")
    m = read_manifest(out)
    assert m["config"]["seed"] == 1 and m["classes"] == ["COVID", "Normal"]
    assert "total" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        fire.Fire(CLI, command=["build", str(sample_src), str(tmp_path / "x"), "--splits", "a=2"], name="shardgen")
    assert e.value.code == 2


def test_fast_tar_writer_matches_tarfile(tmp_path):
    """The hand-rolled headers are byte-for-byte what Python's tarfile writes (PAX format)."""
    import random

    from shardgen.format import TAR_MTIME, ShardWriter

    rnd = random.Random(0)
    items = [("k" * 120, {"png": b"x" * 700, "cls": b"1", "json": b"{}"}), ("e", {"png": b"", "cls": b"0", "json": b"{}"})]
    items += [(f"key-{i}_x", {"png": rnd.randbytes(rnd.randrange(5000)), "cls": b"2", "json": b"{}"}) for i in range(60)]
    with ShardWriter(str(tmp_path / "a.tar")) as w:
        for k, f in items:
            w.add(k, f)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for k, f in items:
            for ext, d in f.items():
                ti = tarfile.TarInfo(f"{k}.{ext}")
                ti.size, ti.mtime, ti.mode, ti.uid, ti.gid, ti.uname, ti.gname = len(d), TAR_MTIME, 0o644, 0, 0, "", ""
                tf.addfile(ti, io.BytesIO(d))
    data = (tmp_path / "a.tar").read_bytes()
    assert data == buf.getvalue()
    assert (w.bytes, w.xxh64, w.samples) == (len(data), xxhash.xxh64_hexdigest(data), len(items))
