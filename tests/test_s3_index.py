"""``--index`` builds with an ``s3://`` SRC (issue 12: ChestX-ray14, CheXpert, MIMIC-CXR sit in a
bucket): the same shards, bytes for bytes, and the same skips as the build of a local copy.

The corpus is ChestX-ray14-like (:func:`test_multilabel.make_nih`): bare names in the CSV for
images under ``images_001/images/`` and ``images_002/images/``, ``|``-separated findings, a
patient column, official train/test lists with bare names; plus one row naming a missing file.
The bare names are resolved against one listing of the bucket; the CSV and lists stay local.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli
from test_multilabel import COLUMNS, NO_FINDING, make_nih
from test_s3 import BUCKET, one_line_error, s3server  # noqa: F401  (the session's SeaweedFS server)

MISSING = "99999999_000.png"
OPTS = ["--columns", COLUMNS, "--label_sep", "|", "--no_finding", NO_FINDING, "--size", "32",
        "--shard_size", "10", "--progress", "false"]


def _index_build(src: str, index: Path, lists: Path, out: Path, env: dict | None = None, check: bool = True):
    return run_cli("build", src, out, "--index", index, *OPTS, "--workers", "2", "--group", r"^(\d+)_",
                   "--split_lists", f"train={lists / 'train_val_list.txt'},test={lists / 'test_list.txt'}",
                   env=env, check=check)


def _shards(out: Path) -> dict[str, list[tuple[str, str]]]:
    m = json.loads((out / "manifest.json").read_text())
    return {sp: [(sh["path"], sh["xxh64"]) for sh in s["shards"]] for sp, s in m["splits"].items()}


def _skips(out: Path) -> list[dict]:
    path = out / "skipped.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def nih_s3(s3server, tmp_path_factory):  # noqa: F811
    """The corpus on disk (with a row and a train-list entry for a missing file), its local
    build, and the same folder uploaded; the index and lists are kept outside SRC too."""
    root = tmp_path_factory.mktemp("s3index")
    src = root / "src"
    src.mkdir()
    make_nih(src)
    with open(src / "Data_Entry_2017.csv", "a", newline="") as f:
        f.write(f"{MISSING},Mass,0,99,40,F,PA\n")
    with open(src / "train_val_list.txt", "a") as f:
        f.write(MISSING + "\n")
    meta = root / "meta"
    meta.mkdir()
    for name in ("Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt"):
        shutil.copy(src / name, meta / name)
    out = root / "local"
    _index_build(str(src), meta / "Data_Entry_2017.csv", meta, out)
    url = f"s3://{BUCKET}/index/nih"
    s3server.client().put(str(src), f"{BUCKET}/index/nih", recursive=True)
    return {"src": src, "meta": meta, "local": out, "url": url, "root": root}


def test_s3_index_build_matches_the_local_build(nih_s3, s3server, tmp_path):  # noqa: F811
    out = tmp_path / "remote"
    p = _index_build(nih_s3["url"], nih_s3["meta"] / "Data_Entry_2017.csv", nih_s3["meta"], out,
                     env=s3server.env())
    assert p.returncode == 0, p.stderr
    local = _shards(nih_s3["local"])
    assert set(local) == {"train", "test"} and all(local.values())
    assert _shards(out) == local
    skips = _skips(out)
    assert skips == _skips(nih_s3["local"])
    assert MISSING in {Path(s["path"]).name for s in skips}
    m = json.loads((out / "manifest.json").read_text())
    assert m["task"] == "multilabel" and NO_FINDING not in m["classes"]


def test_s3_index_absolute_local_path_is_one_line_error(nih_s3, s3server, tmp_path):  # noqa: F811
    index = tmp_path / "abs.csv"
    lines = (nih_s3["meta"] / "Data_Entry_2017.csv").read_text().splitlines()
    name = lines[1].split(",", 1)[0]
    lines[1] = str(nih_s3["src"] / "images_001" / "images" / name) + "," + lines[1].split(",", 1)[1]
    index.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    p = run_cli("build", nih_s3["url"], out, "--index", index, *OPTS, env=s3server.env())
    one_line_error(p, f"--index {index}: line 2", "local path", nih_s3["url"])
    assert not out.exists()


def test_s3_index_ambiguous_bare_name_is_the_local_error(nih_s3, s3server, tmp_path):  # noqa: F811
    src = tmp_path / "src"
    shutil.copytree(nih_s3["src"], src)
    name = (nih_s3["meta"] / "test_list.txt").read_text().split()[0]
    for folder in ("images_002/images/deep", "images_001/images.b"):  # listing order is not the walk's
        (src / folder).mkdir(parents=True)
        shutil.copy(next(src.glob(f"images_*/images/{name}")), src / folder / name)
    s3server.client().put(str(src), f"{BUCKET}/index/ambiguous", recursive=True)
    index = nih_s3["meta"] / "Data_Entry_2017.csv"
    local = run_cli("build", src, tmp_path / "a", "--index", index, *OPTS)
    remote = run_cli("build", f"s3://{BUCKET}/index/ambiguous", tmp_path / "b", "--index", index, *OPTS,
                     env=s3server.env())
    line = one_line_error(local, "ambiguous", name)
    assert one_line_error(remote) == line


def test_s3_index_dask_build_matches_the_local_build(nih_s3, s3server, tmp_path):  # noqa: F811
    out = tmp_path / "dask"
    meta = nih_s3["meta"]
    p = run_cli("build", nih_s3["url"], out, "--index", meta / "Data_Entry_2017.csv", *OPTS, "--group", r"^(\d+)_",
                "--split_lists", f"train={meta / 'train_val_list.txt'},test={meta / 'test_list.txt'}",
                "--scheduler", "local:2", env=s3server.env())
    assert p.returncode == 0, p.stderr
    assert _shards(out) == _shards(nih_s3["local"])
    assert _skips(out) == _skips(nih_s3["local"])
