"""Every reader of the shards (issue 9, items 12-14), with the real packages where they install.

- Hugging Face ``datasets``: ``load_dataset(OUT)`` reads the card ``OUT/README.md`` and gives
  every split with its row count, ``png`` as an image and ``cls`` as a ClassLabel.
- ``wids``: ``ShardListDataset(OUT/<split>/<split>.wids.json)`` gives random access by index.
- ``shardgen export --layout imagefolder``: checked with torchvision ImageFolder's rules
  (torchvision itself does not install here), re-implemented in :func:`image_folder`.

The real packages run in a child process with a clean, offline environment: no network,
caches in the test's temporary folder, nothing of this process's state changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, make_build, run_cli
from shardgen.format import wids_index_name

pytest.importorskip("datasets")
pytest.importorskip("wids")

# torchvision.datasets.folder.IMG_EXTENSIONS
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def shard_samples(out: Path, split: str) -> list[tuple[str, bytes, int, dict]]:
    """(key, png bytes, class index, json) of every sample of ``split``, in manifest shard order."""
    rows = []
    for sh in manifest(out)["splits"][split]["shards"]:
        with tarfile.open(out / sh["path"]) as t:
            members = t.getmembers()
            for i in range(0, len(members), 3):
                png, cls, js = (t.extractfile(m).read() for m in members[i:i + 3])
                rows.append((members[i].name.rsplit(".", 1)[0], png, int(cls), json.loads(js)))
    return rows


def run_py(code: str, tmp_path: Path, cwd: Path | None = None) -> dict:
    """Run ``code`` in a child Python, offline, caches under ``tmp_path``; it prints one JSON object."""
    env = dict(os.environ)
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               HF_DATASETS_CACHE=str(tmp_path / "hf" / "datasets"), WIDS_CACHE=str(tmp_path / "wids"),
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                       cwd=str(cwd) if cwd else None)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def tree(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def build(sample_src, tmp_path_factory) -> Path:
    """4 classes x 30 images at 32x32, 25 per shard (train 96 in 4 shards, test 24 in 1)."""
    return make_build(sample_src, tmp_path_factory.mktemp("readers") / "out", size=32, shard_size=25)


# ----------------------------------------------------------------------------- Hugging Face datasets

HF_LOAD = """
import json, sys
import datasets
ds = datasets.load_dataset(sys.argv[1] if len(sys.argv) > 1 else {out!r})
res = {{}}
for split, d in ds.items():
    feats = d.features
    first = d[0]["png"]
    raw = d.cast_column("png", datasets.Image(decode=False))
    res[split] = {{
        "rows": d.num_rows, "columns": d.column_names,
        "png": type(feats["png"]).__name__, "cls": type(feats["cls"]).__name__,
        "names": feats["cls"].names, "json": sorted(feats["json"]),
        "image": [first.size[0], first.size[1], first.mode],
        "samples": [[r["__key__"], r["cls"], r["png"]["bytes"].hex(), r["json"]] for r in raw],
    }}
print(json.dumps(res))
"""


def test_load_dataset_gives_every_split_with_images_and_class_labels(build, tmp_path):
    before = tree(build)
    m = manifest(build)
    got = run_py(HF_LOAD.format(out=str(build)), tmp_path)
    assert list(got) == list(m["splits"]) == ["train", "test"]
    for split, s in m["splits"].items():
        g = got[split]
        assert g["rows"] == s["samples"] and g["rows"] > 0
        assert g["png"] == "Image" and g["cls"] == "ClassLabel" and g["names"] == m["classes"]
        assert g["image"] == [32, 32, "L"]
        assert g["json"] == ["class", "height", "mode", "pixels", "source", "source_raw", "width"]
        want = shard_samples(build, split)
        assert [r[0] for r in g["samples"]] == [w[0] for w in want]  # shard order, every sample
        for (key, cls, png_hex, meta), (wkey, wpng, wcls, wmeta) in zip(g["samples"], want):
            # datasets fills fields a sample lacks (source_raw: only for non-UTF-8 names) with None.
            assert meta.pop("source_raw") is None
            assert cls == wcls and bytes.fromhex(png_hex) == wpng and meta == wmeta
            assert g["names"][cls] == meta["class"]
    assert tree(build) == before  # datasets wrote nothing into OUT


def test_load_dataset_refuses_a_split_with_a_shard_missing(build, tmp_path):
    """The card's split sizes make datasets check the row counts: a lost shard is an error."""
    import shutil

    b = tmp_path / "b"
    shutil.copytree(build, b)
    (b / manifest(b)["splits"]["train"]["shards"][-1]["path"]).unlink()
    code = ("import datasets\ntry:\n    datasets.load_dataset(%r)\nexcept Exception as e:\n"
            "    print('{\"error\": \"' + type(e).__name__ + '\"}')\n" % str(b))
    assert run_py(code, tmp_path) == {"error": "NonMatchingSplitsSizesError"}


def test_dataset_card_is_a_readable_summary(build):
    card = (build / "README.md").read_text()
    m = manifest(build)
    front, body = card.split("\n---\n", 1)
    assert front.startswith("---\n") and "config_name: default" in front
    for split in m["splits"]:
        assert f'path: "{split}/*.tar"' in front
    assert "# Image classification dataset" in body
    assert "120 images in 4 classes, 32x32 pixels, 8-bit grayscale PNG" in body
    for i, c in enumerate(m["classes"]):
        n = [m["splits"][sp]["class_counts"][c] for sp in m["splits"]]
        assert f"| {i} | {c} | {n[0]} | {n[1]} | {sum(n)} |" in body
    for needle in ("load_dataset(", "make_loader(", "wds.WebDataset(", "wids.ShardListDataset(",
                   "shardgen export", '"shard_size": 25'):
        assert needle in body, needle


def test_rebuilds_keep_and_rewrite_the_reader_files(sample_src, tmp_path):
    """The card and indexes are shardgen's own files: no 'foreign files' refusal; rewritten each build."""
    out = make_build(sample_src, tmp_path / "out", size=16, shard_size=40)
    again = run_cli("build", sample_src, out, "--size", 16, "--shard_size", 40, "--progress", "false")
    assert again.returncode == 0, again.stderr
    p = run_cli("build", sample_src, out, "--size", 16, "--shard_size", 100, "--overwrite", "true",
                "--progress", "false")
    assert p.returncode == 0, p.stderr
    m = manifest(out)
    for split, s in m["splits"].items():
        idx = json.loads((out / split / wids_index_name(split)).read_text())
        assert [sh["nsamples"] for sh in idx["shardlist"]] == [sh["samples"] for sh in s["shards"]]
    assert "| 0 | COVID |" in (out / "README.md").read_text()
    assert '"shard_size": 100' in (out / "README.md").read_text()


def test_split_names_datasets_refuses_are_left_out_of_the_card(sample_src, tmp_path):
    out = tmp_path / "out"
    run_cli("build", sample_src, out, "--size", 16, "--splits", "train=0.8,hold-out=0.2", "--progress", "false",
            check=True)
    card = (out / "README.md").read_text()
    assert 'path: "train/*.tar"' in card and "hold-out/*.tar" not in card
    assert "Left out of the Hugging Face config: `hold-out`" in card
    got = run_py(HF_LOAD.format(out=str(out)), tmp_path)
    assert list(got) == ["train"] and got["train"]["rows"] == manifest(out)["splits"]["train"]["samples"]


# ----------------------------------------------------------------------------- wids

WIDS_READ = """
import json, sys
import wids
index = {index!r}
raw = wids.ShardListDataset(index, transformations=[])  # default: copies each shard into $WIDS_CACHE
dec = wids.ShardListDataset(index, localname=str)   # read in place, no copy
res = {{"len": len(raw), "samples": [], "decoded": []}}
for i in {order!r}:
    s = raw[i]
    # Undecoded members are BytesIO streams.
    res["samples"].append([int(i), s["__key__"], s[".png"].getvalue().hex(), int(s[".cls"].getvalue()),
                           json.loads(s[".json"].getvalue())])
    d = dec[i]
    res["decoded"].append([d["__key__"], list(d[".png"].size), d[".png"].mode, d[".cls"]])
print(json.dumps(res))
"""


def test_wids_index_gives_random_access(build, tmp_path):
    before = tree(build)
    m = manifest(build)
    for split, s in m["splits"].items():
        idx = json.loads((build / split / wids_index_name(split)).read_text())
        assert idx["__kind__"] == "wids-shard-index-v1" and idx["wids_version"] == 1
        assert [sh["url"] for sh in idx["shardlist"]] == [sh["path"].split("/")[1] for sh in s["shards"]]
        want = shard_samples(build, split)
        order = list(np.random.default_rng(0).permutation(len(want)))  # random access, every sample
        # A relative path from another folder: shard URLs resolve against the index's folder.
        rel = os.path.relpath(build / split / wids_index_name(split), tmp_path)
        got = run_py(WIDS_READ.format(index=rel, order=[int(i) for i in order]), tmp_path, cwd=tmp_path)
        assert got["len"] == s["samples"] == len(want)
        for (i, key, png_hex, cls, meta), (dkey, size, mode, dcls) in zip(got["samples"], got["decoded"]):
            wkey, wpng, wcls, wmeta = want[i]
            assert (key, bytes.fromhex(png_hex), cls, meta) == (wkey, wpng, wcls, wmeta)
            assert (dkey, size, mode, dcls) == (wkey, [32, 32], "L", wcls)
    assert tree(build) == before  # no lock or cache files left in OUT


def test_verify_checks_the_wids_index_and_notes_missing_reader_files(build, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(build, b)
    (b / "README.md").unlink()
    (b / "test" / wids_index_name("test")).unlink()
    p = run_cli("verify", b, "--progress", "false")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "note: not found: test/test.wids.json, README.md" in p.stdout
    idx_path = b / "train" / wids_index_name("train")
    idx = json.loads(idx_path.read_text())
    idx["shardlist"][1]["nsamples"] += 1
    idx_path.write_text(json.dumps(idx))
    p = run_cli("verify", b, "--progress", "false")
    assert p.returncode == 1
    assert "train/train.wids.json: lists 4 shards / 97 samples, manifest.json 4 / 96" in p.stdout


def test_upload_sends_the_reader_files_before_the_manifest(build, tmp_path):
    dest = tmp_path / "dest"
    run_cli("upload", build, dest, "--progress", "false", check=True)
    for rel in ("README.md", "train/train.wids.json", "test/test.wids.json"):
        assert (dest / rel).read_bytes() == (build / rel).read_bytes()
        assert (dest / rel).stat().st_mtime_ns <= (dest / "manifest.json").stat().st_mtime_ns


# ----------------------------------------------------------------------------- export --layout imagefolder

def image_folder(root: Path) -> tuple[list[str], dict[str, int], list[tuple[str, int]]]:
    """torchvision ``ImageFolder(root)``: (classes, class_to_idx, samples), by its rules.

    ``find_classes``: sorted names of the folders in ``root`` (an error when there are none);
    ``make_dataset``: for each class in that order, ``os.walk(followlinks=True)`` in sorted
    order, files whose lower-cased name ends in IMG_EXTENSIONS; a class with no such file is
    an error (``allow_empty=False``).
    """
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {root}.")
    class_to_idx = {c: i for i, c in enumerate(classes)}
    samples, found = [], set()
    for c in classes:
        for dirpath, _dirs, files in sorted(os.walk(root / c, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, f), class_to_idx[c]))
                    found.add(c)
    empty = set(classes) - found
    if empty:
        raise FileNotFoundError(f"Found no valid file for the classes {', '.join(sorted(empty))}.")
    return classes, class_to_idx, samples


def check_export(build: Path, dest: Path, splits: list[str]) -> None:
    m = manifest(build)
    assert sorted(os.listdir(dest)) == sorted(splits)
    for split in splits:
        classes, class_to_idx, samples = image_folder(dest / split)
        want = {key: (png, m["classes"][cls]) for key, png, cls, _ in shard_samples(build, split)}
        assert len(samples) == len(want) == m["splits"][split]["samples"]
        counts = {c: 0 for c in classes}
        for path, idx in samples:
            key = Path(path).stem
            png, cls_name = want.pop(key)
            assert classes[idx] == cls_name and Path(path).parent.name == cls_name
            assert Path(path).read_bytes() == png
            counts[cls_name] += 1
        assert not want
        assert counts == {c: n for c, n in m["splits"][split]["class_counts"].items() if n}


def test_export_imagefolder_every_split(build, tmp_path):
    dest = tmp_path / "folders"
    p = run_cli("export", build, "--dest", dest, "--layout", "imagefolder", "--progress", "false")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"wrote {dest} (imagefolder, {p.stdout.split('(imagefolder, ')[1].split(')')[0]}): " \
                               "120 images (train 96, test 24) in 4 classes"
    assert p.stderr == ""  # sorted class names, no empty class: nothing to note
    check_export(build, dest, ["train", "test"])
    assert not [e for e in os.listdir(tmp_path) if e.startswith(".tmp-")]


def test_export_refuses_a_non_empty_dest_and_replaces_it_with_overwrite(build, tmp_path):
    dest = tmp_path / "folders"
    dest.mkdir()
    (dest / "old.txt").write_text("mine")
    p = run_cli("export", build, "--dest", dest, "--split", "test", "--progress", "false")
    assert p.returncode == 2 and "not empty" in p.stderr and "--overwrite" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert os.listdir(dest) == ["old.txt"]
    p = run_cli("export", build, "--dest", dest, "--split", "test", "--overwrite", "true", "--progress", "false")
    assert p.returncode == 0, p.stderr
    check_export(build, dest, ["test"])
    assert sorted(os.listdir(tmp_path)) == ["folders"]  # no temporary or old folder left


@pytest.mark.parametrize("args, message", [
    (["--layout", "stylegan"], "--layout must be one of: imagefolder; got 'stylegan'"),
    (["--split", "val"], "no split 'val' (splits: train, test)"),
    ([], "--dest is required"),
    (["--dest", "{build}/inside"], "must not be the build folder, inside it or above it"),
    (["--dest", "{tmp}/no/such/parent"], "does not exist"),
])
def test_export_usage_errors_are_one_line_exit_2(build, tmp_path, args, message):
    args = [a.format(build=build, tmp=tmp_path) for a in args]
    if "--dest" not in args and message != "--dest is required":
        args += ["--dest", str(tmp_path / "d")]
    before = tree(build)
    p = run_cli("export", build, *args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1 and "Traceback" not in p.stderr
    assert not (tmp_path / "d").exists() and tree(build) == before


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20), dtype=np.uint8)).save(path)


def test_export_notes_empty_classes_and_imagefolder_class_order(tmp_path):
    """A class with one image is missing from one split; the build's class order is not sorted."""
    src = tmp_path / "src"
    for i in range(10):
        _png(src / "a_many" / f"{i}.png", i)
    _png(src / "b_one" / "0.png", 100)
    out = tmp_path / "out"
    run_cli("build", src, out, "--size", 16, "--classes", "b_one,a_many", "--progress", "false", check=True)
    m = manifest(out)
    lacking = [sp for sp, s in m["splits"].items() if not s["class_counts"]["b_one"]]
    assert len(lacking) == 1
    dest = tmp_path / "folders"
    p = run_cli("export", out, "--dest", dest, "--progress", "false")
    assert p.returncode == 0, p.stderr
    notes = p.stderr.strip().splitlines()
    assert notes[0].startswith(f"note: split {lacking[0]}: no images of b_one; no folder for it")
    assert notes[1] == ("note: ImageFolder numbers classes in sorted name order, not this build's order: "
                        "b_one 0->1, a_many 1->0 (use its class_to_idx)")
    assert len(notes) == 2
    check_export(out, dest, list(m["splits"]))
    assert not (dest / lacking[0] / "b_one").exists()
