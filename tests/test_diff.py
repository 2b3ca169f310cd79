"""``shardgen diff`` (issue 15) and the pixel digests it relies on, end to end through the CLI.

The builds come from a tiny source described by an index CSV (``path,label,split``), so a
test changes exactly one image's label, split or pixels, or adds one image, and nothing
else: keys derive from the paths, which stay put. Keys are looked up from each sample's
``.json`` ``source``, never spelled out, so the tests do not depend on the key rule.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import xxhash
from PIL import Image

from conftest import run_cli
from shardgen.format import ShardWriter
from test_s3 import BUCKET, s3env, s3server  # noqa: F401  (the SeaweedFS server fixtures)

SIZE = 32
KINDS = ("added", "removed", "relabelled", "re-split", "pixels changed")


def base_rows() -> list[dict]:
    """16 images: 12 train, 4 test, classes cat and dog alternating."""
    return [{"path": f"img/i{n:03d}.png", "label": ("cat", "dog")[n % 2], "split": "train" if n < 12 else "test"}
            for n in range(16)]


def image(n: int) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (SIZE, SIZE), dtype=np.uint8)


def build(root: Path, rows: list[dict], *args: str, edit: dict[str, np.ndarray] | None = None) -> Path:
    """Write the source (images + index.csv) under ``root`` and build it to ``root/out``."""
    src = root / "src"
    (src / "img").mkdir(parents=True)
    for r in rows:
        n = int(r["path"][5:8])
        arr = (edit or {}).get(r["path"], image(n))
        Image.fromarray(arr, "L").save(src / r["path"])
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "label", "split"])
        w.writeheader()
        w.writerows(rows)
    run_cli("build", src, root / "out", "--index", root / "index.csv", "--size", SIZE, "--shard_size", 4,
            "--workers", 1, "--progress", "false", *args, check=True)
    return root / "out"


def manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def shard_count(b: Path) -> int:
    return sum(len(s["shards"]) for s in manifest(b)["splits"].values())


def key_of(b: Path, source: str) -> str:
    """The key of the sample built from ``source`` (a path relative to SRC)."""
    for s in manifest(b)["splits"].values():
        for sh in s["shards"]:
            with tarfile.open(b / sh["path"]) as tf:
                for m in tf.getmembers():
                    if m.name.endswith(".json") and json.loads(tf.extractfile(m).read())["source"] == source:
                        return m.name[:-5]
    raise KeyError(source)


def diff(a: Path | str, b: Path | str, *args: str, env: dict | None = None) -> tuple[int, str, dict[str, int]]:
    """Run ``shardgen diff``; returns (exit code, stdout, counts by kind from the DIFFERENT line)."""
    p = run_cli("diff", a, b, "--progress", "false", *args, env=env)
    assert "Traceback" not in p.stderr, p.stderr
    assert p.stderr == "", p.stderr
    counts = {}
    if p.returncode == 1:
        last = p.stdout.strip().splitlines()[-1]
        assert last.startswith("DIFFERENT: "), p.stdout
        counts = {k: int(re.search(rf"{k} (\d+)", last).group(1)) for k in KINDS}
    return p.returncode, p.stdout, counts


def shards_read(out: str) -> int:
    return int(re.search(r"\[(\d+) of \d+ shards read", out).group(1))


@pytest.fixture(scope="module")
def builds(tmp_path_factory) -> dict[str, Path]:
    """The base build, an identical rebuild, and one build per kind of change."""
    t = tmp_path_factory.mktemp("diff")
    rows = base_rows()
    out = {"base": build(t / "base", rows), "again": build(t / "again", rows)}
    relabel = [dict(r) for r in rows]
    relabel[3]["label"] = "cat"  # i003: dog -> cat
    out["relabelled"] = build(t / "relabelled", relabel)
    moved = [dict(r) for r in rows]
    moved[5]["split"] = "test"  # i005: train -> test
    out["re-split"] = build(t / "moved", moved)
    changed = image(7)
    changed[10, 20] ^= 0xFF  # one pixel of i007
    out["pixels changed"] = build(t / "pixel", rows, edit={"img/i007.png": changed})
    out["added"] = build(t / "added", rows + [{"path": "img/i016.png", "label": "dog", "split": "train"}])
    out["class order"] = build(t / "order", rows, "--classes", "dog,cat")
    return out


def test_identical_builds_are_the_same_dataset_without_reading_a_shard(builds):
    code, out, _ = diff(builds["base"], builds["again"])
    assert code == 0, out
    assert out.splitlines() == [out.strip()]  # one line, no notes: the shards are byte-identical too
    assert out.startswith("same dataset: 16 samples (test 4, train 12): keys, labels, splits and pixels identical")
    assert "[0 of 8 shards read" in out
    # The manifest's manifest.json path and a file:// URL name the same build.
    code, out, _ = diff(builds["base"] / "manifest.json", f"file://{builds['again']}")
    assert code == 0, out


@pytest.mark.parametrize("kind", ["relabelled", "re-split", "pixels changed", "added"])
def test_one_changed_image_is_counted_and_named(builds, kind):
    base, other = builds["base"], builds[kind]
    source = {"relabelled": "img/i003.png", "re-split": "img/i005.png", "pixels changed": "img/i007.png",
              "added": "img/i016.png"}[kind]
    key = key_of(other, source)
    code, out, counts = diff(base, other)
    assert code == 1, out
    assert counts == {k: int(k == kind) for k in KINDS}, out
    detail = {"relabelled": f"relabelled 1: {key} (dog -> cat)", "re-split": f"re-split 1: {key} (train -> test)",
              "pixels changed": f"pixels changed 1: {key} (train)", "added": f"added 1: {key} (train)"}[kind]
    assert detail in out.splitlines(), out
    splits_b = {"added": "test 4, train 13", "re-split": "test 5, train 11"}.get(kind, "test 4, train 12")
    assert out.splitlines()[-3:-1] == [f"A: {base}: 16 samples (test 4, train 12)",
                                       f"B: {other}: {17 if kind == 'added' else 16} samples ({splits_b})"], out
    if kind == "relabelled":
        assert shards_read(out) == 0  # labels come from dataset.json; the pixel digests all agree
    if kind == "pixels changed":
        assert shards_read(out) == 2  # only the shard holding the image, in each build
        assert "images decoded" not in out  # the .json pixel digests suffice
    if kind == "added":
        code, out, counts = diff(other, base)  # and the other way round
        assert counts == {k: int(k == "removed") for k in KINDS}, out
        assert f"removed 1: {key} (train)" in out.splitlines()


def test_many_changes_show_the_first_five_keys_sorted(builds, tmp_path):
    rows = base_rows()
    for r in rows[:8]:
        r["label"] = "cat" if r["label"] == "dog" else "dog"
    other = build(tmp_path, rows)
    code, out, counts = diff(builds["base"], other)
    assert code == 1 and counts["relabelled"] == 8, out
    line = next(ln for ln in out.splitlines() if ln.startswith("relabelled 8: "))
    keys = sorted(key_of(other, r["path"]) for r in rows[:8])
    shown = re.findall(r"([A-Za-z0-9_-]+) \((?:cat|dog) -> (?:cat|dog)\)", line)
    assert shown == keys[:5] and line.endswith(", ... (3 more)"), line


def test_another_class_order_is_the_same_dataset_with_a_note(builds):
    code, out, _ = diff(builds["base"], builds["class order"])
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].startswith("same dataset: 16 samples") and "[0 of 8 shards read" in lines[0]
    assert "note: class order differs (A: cat, dog; B: dog, cat): labels are compared by class name" in lines
    assert "note: shard bytes differ (4 of 4 shards of A have no byte-identical twin in B), pixels identical" in lines


def strip_pixel_digests(b: Path) -> None:
    """Make ``b`` look like a build from before pixel digests: no .json ``pixels``, no ``pixels_xxh64``."""
    m = manifest(b)
    for s in m["splits"].values():
        for sh in s["shards"]:
            with tarfile.open(b / sh["path"]) as tf:
                members = [(mm.name, tf.extractfile(mm).read()) for mm in tf.getmembers()]
            with ShardWriter(str(b / sh["path"])) as w:
                for i in range(0, len(members), 3):
                    (png_n, png), (_, cls), (_, js) = members[i:i + 3]
                    meta = json.loads(js)
                    del meta["pixels"]
                    w.add(png_n[:-4], {"png": png, "cls": cls,
                                       "json": json.dumps(meta, separators=(",", ":")).encode()})
            sh.update(bytes=w.bytes, xxh64=w.xxh64)
            del sh["pixels_xxh64"]
    (b / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")


def test_builds_without_pixel_digests_verify_and_are_compared_by_decoding(builds, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(builds["base"], old)
    strip_pixel_digests(old)
    v = run_cli("verify", old, "--progress", "false")
    assert v.returncode == 0 and v.stdout.startswith("OK") and "pixel digests" not in v.stdout, v.stdout

    code, out, _ = diff(builds["base"], old)
    assert code == 0, out
    assert "[8 of 8 shards read, 16 images decoded" in out  # base: .json digests; old: decoded
    assert out.splitlines()[1] == ("note: shard bytes differ (4 of 4 shards of A have no byte-identical twin "
                                   "in B), pixels identical")
    code, out, counts = diff(old, builds["pixels changed"])
    assert code == 1 and counts == {k: int(k == "pixels changed") for k in KINDS}, out
    # --decode ignores the recorded digests everywhere.
    code, out, _ = diff(builds["base"], builds["again"], "--decode")
    assert code == 0 and "[8 of 8 shards read, 32 images decoded" in out, out


def test_a_split_without_dataset_json_is_read_from_its_shards(builds, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(builds["base"], b)
    (b / "test" / "dataset.json").unlink()
    code, out, _ = diff(builds["again"], b)
    assert code == 0, out
    assert "[1 of 8 shards read" in out  # the test split's one shard in B; A's is settled by the digests
    assert f"note: {b}: test/dataset.json missing: read the split's shards instead" in out.splitlines()
    code, out, counts = diff(b, builds["re-split"])
    assert code == 1 and counts == {k: int(k == "re-split") for k in KINDS}, out


def test_unreadable_builds_exit_2_with_one_line(builds, tmp_path):
    p = run_cli("diff", builds["base"], tmp_path / "nothing", "--progress", "false")
    assert p.returncode == 2 and p.stdout == "", p.stdout
    assert p.stderr.strip().count("\n") == 0 and "no manifest.json here" in p.stderr, p.stderr
    broken = tmp_path / "broken"
    shutil.copytree(builds["base"], broken)
    for s in manifest(broken)["splits"].values():
        for sh in s["shards"]:
            (broken / sh["path"]).write_bytes((broken / sh["path"]).read_bytes()[:1500])
    p = run_cli("diff", builds["pixels changed"], broken, "--progress", "false")
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == "", p.stderr
    assert re.fullmatch(rf"shardgen diff: error: {broken}/(train|test)/\S+\.tar: truncated: .*; "
                        r"run shardgen verify\n", p.stderr), p.stderr


def tamper_json_pixels(b: Path, shard: str) -> str:
    """Replace the first sample's .json ``pixels`` in place (same length); returns its key."""
    path = b / shard
    with tarfile.open(path) as tf:
        m = next(mm for mm in tf.getmembers() if mm.name.endswith(".json"))
        js = tf.extractfile(m).read()
    old = json.loads(js)["pixels"]
    new = xxhash.xxh64_hexdigest(old.encode())
    data = bytearray(path.read_bytes())
    data[m.offset_data:m.offset_data + len(js)] = js.replace(old.encode(), new.encode())
    path.write_bytes(bytes(data))
    return m.name[:-5]


def test_verify_reports_tampered_pixel_digests(builds, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(builds["base"], b)
    v = run_cli("verify", b, "--progress", "false")
    assert v.returncode == 0 and "pixel digests match" in v.stdout, v.stdout

    m = manifest(b)
    first, second = m["splits"]["train"]["shards"][:2]
    key = tamper_json_pixels(b, first["path"])
    second["pixels_xxh64"] = "0123456789abcdef"
    (b / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    v = run_cli("verify", b, "--progress", "false")
    assert v.returncode == 1 and "Traceback" not in v.stderr, v.stdout + v.stderr
    lines = v.stdout.splitlines()
    assert any(ln.startswith(f"{first['path']}: {key}: decoded pixels have xxh64 ") and ", .json says pixels " in ln
               for ln in lines), v.stdout
    assert any(ln.startswith(f"{second['path']}: pixels_xxh64 of the samples is ")
               and ln.endswith("manifest says 0123456789abcdef (keys, order or pixels changed)") for ln in lines), v.stdout
    # Without decoding, the .json digests are checked against the manifest's shard digests.
    v = run_cli("verify", b, "--progress", "false", "--decode", "false")
    assert v.returncode == 1
    assert sum("pixels_xxh64 of the samples is" in ln for ln in v.stdout.splitlines()) == 2, v.stdout


@pytest.mark.s3
def test_a_local_build_against_its_copy_on_s3(builds, s3server, s3env):
    url = f"s3://{BUCKET}/diff/base"
    up = run_cli("upload", builds["base"], url, "--progress", "false", env=s3env)
    assert up.returncode == 0, up.stdout + up.stderr
    code, out, _ = diff(builds["base"], url, env=s3env)
    assert code == 0 and "[0 of 8 shards read" in out and len(out.splitlines()) == 1, out
    code, out, counts = diff(url, builds["pixels changed"], env=s3env)
    assert code == 1 and counts == {k: int(k == "pixels changed") for k in KINDS}, out
    assert shards_read(out) == 2  # one shard from S3, one local
