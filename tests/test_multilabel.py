"""Multi-label CSV corpora end to end: an NIH ChestX-ray14-style corpus built with one command.

The corpus has NIH's real CSV columns (``Image Index``, ``Finding Labels``, ``Patient ID``
and a few others), ``|``-separated findings, ``No Finding``, several images per patient,
images under ``images_001/images/`` and ``images_002/images/`` named bare in the CSV, and
official ``train_val_list.txt`` / ``test_list.txt`` split by patient.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import run_cli
from test_stylegan import StyleGANImageFolder

FINDINGS = ["Atelectasis", "Cardiomegaly", "Effusion", "Hernia", "Infiltration", "Mass"]
NO_FINDING = "No Finding"
COLUMNS = "path=Image Index,label=Finding Labels,group=Patient ID"


def make_nih(root: Path, patients: int = 24, seed: int = 0) -> dict:
    """Write an NIH-style corpus under ``root``; returns ``{name: (findings, patient)}`` and the lists."""
    rng = random.Random(seed)
    truth: dict[str, tuple[tuple[str, ...], str]] = {}
    rows = []
    for p in range(1, patients + 1):
        for k in range(rng.randint(1, 4)):
            name = f"{p:08d}_{k:03d}.png"
            if rng.random() < 0.35:
                found: tuple[str, ...] = ()
            else:
                weights = [0.4, 0.25, 0.4, 0.05, 0.5, 0.2]
                found = tuple(f for f, w in zip(FINDINGS, weights) if rng.random() < w) or ("Infiltration",)
            cell = "|".join(rng.sample(found, len(found))) if found else NO_FINDING  # NIH's order is not sorted
            folder = root / ("images_001" if p <= patients // 2 else "images_002") / "images"
            folder.mkdir(parents=True, exist_ok=True)
            px = np.random.default_rng([seed, p, k]).integers(0, 256, (40, 48), dtype=np.uint8)
            Image.fromarray(px, "L").save(folder / name)
            truth[name] = (tuple(sorted(found)), str(p))
            rows.append([name, cell, str(k), str(p), str(rng.randint(20, 80)), rng.choice("MF"), "PA"])
    with open(root / "Data_Entry_2017.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                    "Patient Gender", "View Position"])
        w.writerows(rows)
    test_patients = {str(p) for p in range(1, patients + 1) if p % 4 == 0}
    lists = {"train": sorted(n for n, (_, p) in truth.items() if p not in test_patients),
             "test": sorted(n for n, (_, p) in truth.items() if p in test_patients)}
    (root / "train_val_list.txt").write_text("".join(n + "\n" for n in lists["train"]))
    (root / "test_list.txt").write_text("".join(n + "\n" for n in lists["test"]))
    return {"truth": truth, "lists": lists}


def nih_build(src: Path, out: Path, *extra: str, check: bool = True):
    return run_cli("build", src, out, "--index", src / "Data_Entry_2017.csv", "--columns", COLUMNS,
                   "--label_sep", "|", "--no_finding", NO_FINDING, "--size", 32, "--shard_size", 10,
                   "--workers", 2, "--progress", "false", *extra, check=check)


@pytest.fixture(scope="module")
def nih(tmp_path_factory):
    root = tmp_path_factory.mktemp("nih")
    src = root / "src"
    src.mkdir()
    corpus = make_nih(src)
    out = root / "out"
    p = nih_build(src, out, "--split_lists",
                  f"train={src / 'train_val_list.txt'},test={src / 'test_list.txt'}")
    return {"src": src, "out": out, "proc": p, **corpus}


def _multihot(found: tuple[str, ...], classes: list[str]) -> list[float]:
    return [1.0 if c in found else 0.0 for c in classes]


def _shard_samples(out: Path):
    """Every sample of every shard, with stock ``tarfile``: ``{key: {ext: bytes}}``."""
    samples: dict[str, dict[str, bytes]] = {}
    for tar in sorted(out.glob("*/*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, ext = m.name.split(".", 1)
                samples.setdefault(key, {})[ext] = t.extractfile(m).read()
    return samples


def test_manifest_records_the_task_and_rates(nih):
    m = json.loads((nih["out"] / "manifest.json").read_text())
    found = sorted({f for fs, _ in nih["truth"].values() for f in fs})
    assert m["task"] == "multilabel"
    assert m["classes"] == found
    assert NO_FINDING not in m["classes"]
    rates = m["report"]["positive_rates"]
    assert set(rates) == {"train", "test"}
    for sp, s in m["splits"].items():
        names = nih["lists"][sp]
        for c in found:
            positives = sum(c in nih["truth"][n][0] for n in names)
            assert s["class_counts"][c] == positives
            assert rates[sp][c] == round(positives / len(names), 4)
        assert m["report"]["no_finding"][sp] == sum(not nih["truth"][n][0] for n in names)
    assert "positives, rate" in nih["proc"].stdout


def test_split_lists_honoured_exactly(nih):
    m = json.loads((nih["out"] / "manifest.json").read_text())
    samples = _shard_samples(nih["out"])
    for sp in ("train", "test"):
        got = set()
        for sh in m["splits"][sp]["shards"]:
            with tarfile.open(nih["out"] / sh["path"]) as t:
                for mem in t.getmembers():
                    if mem.name.endswith(".json"):
                        got.add(Path(json.loads(t.extractfile(mem).read())["source"]).name)
        assert got == set(nih["lists"][sp])
    assert len(samples) == len(nih["truth"])


def test_members_readable_without_custom_code(nih):
    """``.labels.npy`` is what numpy.save writes; ``.json`` lists the indices; no ``.cls``."""
    classes = json.loads((nih["out"] / "classes.json").read_text())["classes"]
    for key, parts in _shard_samples(nih["out"]).items():
        assert sorted(parts) == ["json", "labels.npy", "png"]
        meta = json.loads(parts["json"])
        name = Path(meta["source"]).name
        want = _multihot(nih["truth"][name][0], classes)
        vec = np.load(io.BytesIO(parts["labels.npy"]), allow_pickle=False)
        assert vec.dtype == np.float32 and vec.tolist() == want
        assert meta["labels"] == [i for i, v in enumerate(want) if v]
        assert meta["label_names"] == [classes[i] for i in meta["labels"]]
        assert "class" not in meta


def test_stock_webdataset_reads_targets(nih):
    wds = pytest.importorskip("webdataset")
    classes = json.loads((nih["out"] / "classes.json").read_text())["classes"]
    urls = [str(p) for p in sorted((nih["out"] / "train").glob("*.tar"))]
    n = 0
    for img, vec, meta in wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("png", "labels.npy", "json"):
        assert vec.tolist() == _multihot(nih["truth"][Path(meta["source"]).name][0], classes)
        assert img.size == (32, 32)
        n += 1
    assert n == len(nih["lists"]["train"])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_targets_equal_the_csv(nih, workers):
    from loaders import make_loader

    for sp in ("train", "test"):
        loader = make_loader(nih["out"], split=sp, batch_size=4, mode="eval", num_workers=workers, with_keys=True)
        classes = loader.classes
        keys_seen = 0
        by_key = {}
        for key, parts in _shard_samples(nih["out"]).items():
            by_key[key] = Path(json.loads(parts["json"])["source"]).name
        for images, targets, keys in loader:
            assert targets.dtype.is_floating_point and targets.shape == (4, len(classes))
            real = targets[:, 0] != -100
            for row, key, ok in zip(targets.tolist(), keys, real.tolist()):
                if not ok:
                    assert key == "" and row == [-100.0] * len(classes)
                    continue
                assert row == _multihot(nih["truth"][by_key[key]][0], classes)
                keys_seen += 1
        assert keys_seen == len(nih["lists"][sp])


def test_verify_info_preview(nih, tmp_path):
    v = run_cli("verify", nih["out"], "--progress", "false")
    assert v.returncode == 0, v.stdout + v.stderr
    info = run_cli("info", nih["out"], check=True)
    assert "multi-label" in info.stdout and "cardinality" in info.stdout
    sheet = tmp_path / "sheet.png"
    p = run_cli("preview", nih["out"], "--out", sheet, check=True)
    assert sheet.exists(), p.stderr


def test_verify_catches_a_target_that_disagrees_with_json(nih, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(nih["out"], out)
    shard = sorted((out / "train").glob("*.tar"))[0]
    with tarfile.open(shard) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    classes = json.loads((out / "classes.json").read_text())["classes"]
    buf = io.BytesIO()
    np.save(buf, np.ones(len(classes), np.float32))
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as t:
        for i, (m, data) in enumerate(members):
            if m.name.endswith(".labels.npy") and i == 1:
                data = buf.getvalue()
                m.size = len(data)
            t.addfile(m, io.BytesIO(data))
    v = run_cli("verify", out, "--progress", "false")
    assert v.returncode == 1
    assert ".json says labels" in v.stdout


def test_stylegan_export_has_vector_labels(nih, tmp_path):
    z = tmp_path / "sg.zip"
    run_cli("stylegan", nih["out"], "--split", "all", "--dest", z, "--progress", "false", check=True)
    ds = StyleGANImageFolder(str(z))
    labels = ds.load_raw_labels()
    classes = json.loads((nih["out"] / "classes.json").read_text())["classes"]
    # training/dataset.py: label_shape is [max + 1] for int64 labels, else raw_labels.shape[1:]
    assert labels.dtype == np.float32 and labels.shape == (len(nih["truth"]), len(classes))
    assert list(labels.shape[1:]) == [len(classes)]
    assert ds.raw_shape == [len(nih["truth"]), 1, 32, 32]
    assert sorted(map(tuple, labels.tolist())) == sorted(tuple(_multihot(f, classes)) for f, _ in nih["truth"].values())


def test_computed_split_keeps_patients_whole(nih, tmp_path):
    out = tmp_path / "out"
    nih_build(nih["src"], out, "--splits", "train=0.7,val=0.1,test=0.2", "--seed", "3")
    m = json.loads((out / "manifest.json").read_text())
    where: dict[str, set[str]] = {}
    for sp, s in m["splits"].items():
        for sh in s["shards"]:
            with tarfile.open(out / sh["path"]) as t:
                for mem in t.getmembers():
                    if mem.name.endswith(".json"):
                        name = Path(json.loads(t.extractfile(mem).read())["source"]).name
                        where.setdefault(nih["truth"][name][1], set()).add(sp)
    assert all(len(s) == 1 for s in where.values())
    assert sum(s["samples"] for s in m["splits"].values()) == len(nih["truth"])
    assert set(m["report"]["positive_rates"]) == {"train", "val", "test"}
    again = tmp_path / "again"
    nih_build(nih["src"], again, "--splits", "train=0.7,val=0.1,test=0.2", "--seed", "3")
    assert (again / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()


def test_unlisted_image_is_skipped_with_a_reason(nih, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    train = nih["lists"]["train"]
    (lists / "train.txt").write_text("\n".join(train[1:]) + "\n")
    (lists / "test.txt").write_text("\n".join(nih["lists"]["test"]) + "\nnot_in_the_csv.png\n")
    out = tmp_path / "out"
    p = nih_build(nih["src"], out, "--split_lists", f"train={lists / 'train.txt'},test={lists / 'test.txt'}")
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(Path(s["path"]).name, s["reason"]) for s in skipped] == [(train[0], "in no --split_lists file")]
    assert "1 listed file(s) are not in the index" in p.stderr


def _one_line_usage_error(p, *words):
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for w in words:
        assert w in lines[0], lines[0]


def test_listed_twice_is_a_usage_error(nih, tmp_path):
    (tmp_path / "a.txt").write_text("\n".join(nih["lists"]["train"]) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(nih["lists"]["test"] + nih["lists"]["train"][:1]) + "\n")
    out = tmp_path / "out"
    p = nih_build(nih["src"], out, "--split_lists", f"train={tmp_path / 'a.txt'},test={tmp_path / 'b.txt'}",
                  check=False)
    _one_line_usage_error(p, "listed twice", nih["lists"]["train"][0])
    (tmp_path / "c.txt").write_text("\n".join(nih["lists"]["test"] + nih["lists"]["test"][:1]) + "\n")
    p = nih_build(nih["src"], out, "--split_lists", f"train={tmp_path / 'a.txt'},test={tmp_path / 'c.txt'}",
                  check=False)
    _one_line_usage_error(p, "listed twice")
    assert not out.exists()


def test_bad_columns_are_usage_errors(nih, tmp_path):
    src, out = nih["src"], tmp_path / "out"
    base = ["build", src, out, "--index", src / "Data_Entry_2017.csv", "--label_sep", "|"]
    _one_line_usage_error(run_cli(*base, "--columns", "path=Image Index,label=Findings"), "Findings")
    _one_line_usage_error(run_cli(*base, "--columns", "path=Image Index,labels=Finding Labels"), "unknown role")
    _one_line_usage_error(run_cli(*base), "'path'")
    _one_line_usage_error(run_cli("build", src, out, "--label_sep", "|"), "--index")
    assert not out.exists()


def test_ambiguous_bare_name_is_a_usage_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_nih(src, patients=4)
    name = sorted((src / "images_001" / "images").iterdir())[0].name
    (src / "images_002" / "images" / name).write_bytes((src / "images_001" / "images" / name).read_bytes())
    p = nih_build(src, tmp_path / "out", check=False)
    _one_line_usage_error(p, "ambiguous", f"images_001/images/{name}", f"images_002/images/{name}")


def test_iterative_stratification_keeps_rates_and_groups():
    """The split rule alone, at a size where proportions mean something: rates close to the
    corpus's in every split, groups whole, totals close to the ratios, same seed same split."""
    from shardgen.build.mlsplit import assign_multilabel_indices

    rng = random.Random(5)
    rates = [0.2, 0.05, 0.1, 0.01]
    paths, labels, groups, patient = [], [], {}, 0
    for i in range(3000):
        if rng.random() < 0.4:
            patient += 1
        paths.append(f"{patient:06d}_{i:04d}.png")
        labels.append(tuple(c for c, r in enumerate(rates) if rng.random() < r))
        groups.setdefault(patient, []).append(i)
    together = [g for g in groups.values() if len(g) > 1]
    ratios = [("train", 0.7), ("val", 0.1), ("test", 0.2)]
    sets = sorted(set(labels))
    codes = np.asarray([sets.index(ls) for ls in labels], dtype=np.int64)
    idx = assign_multilabel_indices(paths, sets, codes, len(rates), together, ratios, seed=1)
    assert idx.tolist() == assign_multilabel_indices(paths, sets, codes, len(rates), together, ratios, seed=1).tolist()
    out = [ratios[j][0] for j in idx.tolist()]
    assert all(len({out[i] for i in g}) == 1 for g in groups.values())
    for name, r in ratios:
        members = [i for i, s in enumerate(out) if s == name]
        assert abs(len(members) / len(out) - r) < 0.01
        for c in range(len(rates)):
            overall = sum(c in ls for ls in labels) / len(labels)
            here = sum(c in labels[i] for i in members) / len(members)
            assert abs(here - overall) < 0.01 + 0.1 * overall, (name, c, here, overall)


def test_no_finding_with_other_labels_is_a_usage_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    make_nih(src, patients=3)
    csv_path = src / "Data_Entry_2017.csv"
    rows = csv_path.read_text().splitlines()
    first = rows[1].split(",")
    first[1] = "Mass|No Finding"
    csv_path.write_text("\n".join([rows[0], ",".join(first)] + rows[2:]) + "\n")
    p = nih_build(src, tmp_path / "out", check=False)
    _one_line_usage_error(p, "line 2", "'No Finding' together with other labels")


def test_stylegan_shards_yield_multihot_labels(nih):
    from loaders import StyleGANShards

    ds = StyleGANShards(nih["out"], split="test")
    classes = json.loads((nih["out"] / "classes.json").read_text())["classes"]
    assert ds.label_dim == len(classes)
    want = sorted(tuple(_multihot(nih["truth"][n][0], classes)) for n in nih["lists"]["test"])
    it = iter(ds)
    got = sorted(tuple(next(it)[1].tolist()) for _ in want)
    assert got == want
    assert sorted(tuple(ds.get_label(i).tolist()) for i in range(len(want))) == want


def test_hugging_face_datasets_reads_the_multi_hot_target(nih, tmp_path):
    """The dataset card declares ``labels.npy`` (List(float32), length C): load_dataset gives it."""
    pytest.importorskip("datasets")
    from test_readers import run_py

    code = f"""
import datasets, json
ds = datasets.load_dataset({str(nih['out'])!r})
print(json.dumps({{sp: [[r["json"]["source"], r["labels.npy"], r["json"]["labels"]] for r in ds[sp]] for sp in ds}}))
"""
    got = run_py(code, tmp_path)
    classes = json.loads((nih["out"] / "classes.json").read_text())["classes"]
    for sp in ("train", "test"):
        assert len(got[sp]) == len(nih["lists"][sp])
        for source, vec, idx in got[sp]:
            want = _multihot(nih["truth"][Path(source).name][0], classes)
            assert vec == want and idx == [i for i, v in enumerate(want) if v]


def test_loader_state_class_counts_and_balance_on_a_multilabel_build(nih):
    """A multi-label epoch resumes exactly; class_counts are the positives of the epoch;
    balance (a single-label notion) is refused with a reason."""
    from loaders import UsageError, make_loader

    def mk():
        return make_loader(nih["out"], batch_size=4, num_workers=2, with_keys=True, seed=1)

    want = [(list(k), t.clone()) for _, t, k in mk()]
    first = mk()
    part = []
    for _, t, k in first:
        part.append((list(k), t.clone()))
        if len(part) == 2:
            break
    again = mk()
    again.load_state_dict(first.state_dict())
    first.close()
    rest = [(list(k), t.clone()) for _, t, k in again]
    assert [k for k, _ in part + rest] == [k for k, _ in want]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(part + rest, want))
    positives = sum(t.sum(0) for _, t in want)
    assert again.class_counts == {c: int(n) for c, n in zip(again.classes, positives.tolist())}
    with pytest.raises(UsageError, match="multi-label"):
        make_loader(nih["out"], batch_size=4, num_workers=0, balance="class")


def test_decoded_cache_serves_multilabel_targets(nih, tmp_path, decode_calls):
    """The decoded cache keeps multi-hot targets: the second epoch decodes nothing and
    gives the same batches as without the cache."""
    from loaders import make_loader

    calls = decode_calls

    def epochs(cache):
        ld = make_loader(nih["out"], batch_size=4, num_workers=0, with_keys=True, mode="eval",
                         decoded_cache=cache)
        out = []
        for _ in range(2):
            calls.clear()
            out.append([(list(k), x.clone(), t.clone()) for x, t, k in ld])
        return out, len(calls)

    off, _ = epochs(None)
    on, second_epoch_decodes = epochs(str(tmp_path / "dec"))
    assert second_epoch_decodes == 0
    for a, b in zip(off, on):
        assert [k for k, _, _ in a] == [k for k, _, _ in b]
        assert all(torch.equal(x, y) and torch.equal(s, t) for (_, x, s), (_, y, t) in zip(a, b))
    assert any(name.endswith("m.dec") for name in os.listdir(tmp_path / "dec"))
