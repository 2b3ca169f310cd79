"""``shardgen verify``: passes on a fresh build, and names every corruption the tests make.

Every corruption is made on a copy of the session's ``small_build`` (120 samples at 64x64,
25 per shard: train-000000..3, test-000000) and checked through the CLI in a subprocess:
exit code 1, the shard / key / reason in the output, and never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import xxhash
from PIL import Image

from conftest import run_cli
from shardgen.commands.verify import format_result, verify
from shardgen.format import TAR_MTIME, TarReader


@pytest.fixture
def build(small_build, tmp_path) -> Path:
    """A private, writable copy of the session build."""
    dst = tmp_path / "b"
    shutil.copytree(small_build, dst)
    return dst


def manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def failing(b, *args) -> str:
    """Run verify, assert it failed cleanly (exit 1, no traceback); return stdout+stderr."""
    p = run_cli("verify", b, "--progress", "false", *args)
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "Traceback" not in out, out
    assert "FAILED:" in p.stdout, out
    return out


def member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    """{member name: (offset of its data, size)} from the standard library's tarfile."""
    with tarfile.open(path) as t:
        return {m.name: (m.offset_data, m.size) for m in t.getmembers()}


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x10]))


def read_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    with open(path, "rb") as f:
        return [(s.key, dict(s.parts)) for s in TarReader(f).samples()]


def write_shard(b: Path, rel: str, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    """Rewrite shard ``rel`` with ``samples`` and make its manifest entry match the new file."""
    path = b / rel
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as t:
        for key, parts in samples:
            for ext, data in parts.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size, ti.mtime, ti.mode = len(data), TAR_MTIME, 0o644
                t.addfile(ti, io.BytesIO(data))
    data = path.read_bytes()
    m = manifest(b)
    for s in m["splits"].values():
        for sh in s["shards"]:
            if sh["path"] == rel:
                sh.update(samples=len(samples), bytes=len(data), xxh64=xxhash.xxh64_hexdigest(data))
        s["samples"] = sum(sh["samples"] for sh in s["shards"])
    (b / "manifest.json").write_text(json.dumps(m))


def test_fresh_build_passes(small_build):
    p = run_cli("verify", small_build, "--progress", "false")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("OK: 120 samples"), p.stdout
    m = manifest(small_build)
    for split, s in m["splits"].items():
        assert f"{split} {s['samples']}" in lines[0]
    assert "120 images decoded (64x64 L png)" in lines[0]
    assert "5 shards" in lines[0]


def test_fresh_build_passes_without_decoding_and_in_one_process(small_build):
    p = run_cli("verify", small_build, "--decode", "false", "--workers", "1", "--progress", "false")
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("OK: 120 samples") and "not decoded" in p.stdout


def test_manifest_path_and_file_url_work(small_build):
    for src in (small_build / "manifest.json", f"file://{small_build}"):
        p = run_cli("verify", src, "--progress", "false")
        assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize("where", ["png", "cls", "json"])
def test_flipped_byte_in_a_member_is_found_and_named(build, where):
    rel = "train/train-000001.tar"
    offsets = member_offsets(build / rel)
    key = read_samples(build / rel)[7][0]
    off, size = offsets[f"{key}.{where}"]
    # .json: flip a byte of the class name, so the damage is visible in the sample too
    pos = off + (size // 2 if where != "json" else
                 (build / rel).read_bytes()[off:off + size].index(b'"class":"') + 10)
    flip(build / rel, pos)
    out = failing(build)
    assert f"{rel}: xxh64 is" in out and "contents changed" in out
    assert f"{rel}: {key}:" in out, out  # the sample is named too
    # Nothing else is blamed: only this shard, and what follows from its sample's label.
    for line in out.splitlines()[:-1]:
        assert line.startswith((rel, "train/dataset.json", "manifest.json: class counts")), line


def test_any_flipped_byte_changes_the_checksum(build):
    """A flip that leaves every sample valid (inside .json text) is still caught by xxh64."""
    rel = "train/train-000001.tar"
    key = read_samples(build / rel)[2][0]
    off, size = member_offsets(build / rel)[f"{key}.json"]
    text = (build / rel).read_bytes()[off:off + size]
    flip(build / rel, off + text.index(b'"source":"') + 12)  # a letter of the source path
    out = failing(build)
    assert out.splitlines()[0] == f"{rel}: xxh64 is " + out.splitlines()[0].split("xxh64 is ")[1]
    assert len(out.splitlines()) == 2


def test_flipped_byte_in_a_tar_header_is_found(build):
    rel = "test/test-000000.tar"
    offsets = member_offsets(build / rel)
    name = sorted(offsets, key=lambda n: offsets[n][0])[10]
    flip(build / rel, offsets[name][0] - 512 + 20)  # inside the member's name field
    out = failing(build)
    assert f"{rel}: corrupt tar header at byte" in out, out


def test_flipped_byte_in_tar_padding_is_found_by_checksum(build):
    rel = "train/train-000003.tar"
    size = (build / rel).stat().st_size
    flip(build / rel, size - 100)  # in the end-of-archive zeros: only the hash can tell
    out = failing(build)
    assert f"{rel}: xxh64 is" in out


def test_missing_shard(build):
    rel = "train/train-000002.tar"
    (build / rel).unlink()
    out = failing(build)
    assert f"{rel}: missing: listed in manifest.json but not found" in out
    # dataset.json is not blamed sample by sample for what the missing shard held
    assert "not in dataset.json" not in out


def test_extra_unlisted_shard(build):
    shutil.copy(build / "train/train-000000.tar", build / "train/train-000099.tar")
    out = failing(build)
    assert "train/train-000099.tar: shard not listed in manifest.json" in out


@pytest.mark.parametrize("cut", ["inside-member", "at-member-boundary"])
def test_truncated_shard(build, cut):
    rel = "train/train-000000.tar"
    path = build / rel
    data = path.read_bytes()
    if cut == "inside-member":
        n = len(data) // 2
    else:
        offsets = member_offsets(path)
        last = max(offsets.values())
        n = last[0] + (last[1] + 511) // 512 * 512  # after the last member, before the end marker
    path.write_bytes(data[:n])
    out = failing(build)
    assert f"{rel}: truncated" in out, out
    assert f"the file has {n:,} bytes, manifest says {len(data):,} bytes" in out


def test_manifest_that_does_not_parse(build):
    (build / "manifest.json").write_text('{"format": "shardgen/1", "splits": ')
    out = failing(build)
    assert "manifest.json: manifest does not parse as JSON" in out


def test_manifest_missing(build):
    (build / "manifest.json").unlink()
    out = failing(build)
    assert "manifest.json" in out and "finished shardgen build" in out


def test_not_a_folder_is_a_usage_error(tmp_path):
    p = run_cli("verify", tmp_path / "nope", "--progress", "false")
    assert p.returncode == 2 and "no such build folder" in p.stderr and "Traceback" not in p.stderr


def test_empty_shard_file(build):
    (build / "test/test-000000.tar").write_bytes(b"")
    out = failing(build)
    assert "test/test-000000.tar: empty file (0 bytes)" in out


def test_label_out_of_range_and_class_mismatch_are_named(build):
    rel = "train/train-000001.tar"
    samples = read_samples(build / rel)
    k1, p1 = samples[3]
    p1["cls"] = b"9"
    k2, p2 = samples[4]
    cls = int(p2["cls"])
    other = (cls + 1) % 4
    p2["cls"] = str(other).encode()
    write_shard(build, rel, samples)
    out = failing(build)
    assert f"{rel}: {k1}: label 9 out of range (0..3)" in out
    assert f"{rel}: {k2}: label {other} is" in out and "but .json says class" in out
    # and dataset.json now disagrees with the shard for k2
    assert f"train/dataset.json: {k2}.png: label {cls}, the shard says {other}" in out


def test_missing_member_and_stray_member(build):
    rel = "test/test-000000.tar"
    samples = read_samples(build / rel)
    k1, p1 = samples[0]
    del p1["json"]
    k2, p2 = samples[1]
    p2["txt"] = b"hello"
    write_shard(build, rel, samples)
    out = failing(build)
    assert f"{rel}: {k1}: missing member .json" in out
    assert f"{rel}: {k2}: unexpected member .txt" in out


def test_image_of_wrong_size_and_undecodable_image(build):
    rel = "train/train-000002.tar"
    samples = read_samples(build / rel)
    buf = io.BytesIO()
    Image.new("L", (32, 32)).save(buf, "PNG")
    samples[0][1]["png"] = buf.getvalue()
    samples[1][1]["png"] = b"\x89PNG\r\n\x1a\n garbage"
    write_shard(build, rel, samples)
    out = failing(build)
    assert f"{rel}: {samples[0][0]}: image is 32x32 L, manifest says 64x64 L" in out
    assert f"{rel}: {samples[1][0]}: image does not decode" in out


def test_key_not_unique_across_splits(build):
    test_rel, train_rel = "test/test-000000.tar", "train/train-000003.tar"
    tkey, tparts = read_samples(build / test_rel)[0]
    samples = read_samples(build / train_rel)
    other = samples[0][1]  # another image under the test sample's key
    samples.append((tkey, dict(other)))
    write_shard(build, train_rel, samples)
    out = failing(build)
    assert f"{test_rel}: {tkey}: key is not unique: also in {train_rel}" in out, out
    assert "same image" not in out  # a copy of another train image: same split, allowed


def test_same_pixels_in_two_splits(build):
    test_rel, train_rel = "test/test-000000.tar", "train/train-000003.tar"
    tkey, tparts = read_samples(build / test_rel)[4]
    samples = read_samples(build / train_rel)
    # the same pixels, encoded differently (other bytes), under a new key
    a = np.asarray(Image.open(io.BytesIO(tparts["png"])))
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, "PNG", compress_level=9)
    assert buf.getvalue() != tparts["png"]
    samples.append(("reencoded-copy", dict(tparts, png=buf.getvalue())))
    write_shard(build, train_rel, samples)
    out = failing(build)
    assert f"{test_rel}: {tkey}: same image as reencoded-copy in split 'train' ({train_rel})" in out, out
    assert "train/dataset.json: reencoded-copy.png: sample is in the shards but not in dataset.json" in out
    assert "class counts of split 'train' differ" in out
    assert "key is not unique" not in out


def test_dataset_json_order_and_contents(build):
    path = build / "train/dataset.json"
    doc = json.loads(path.read_text())
    labels = doc["labels"]
    labels[0], labels[1] = labels[1], labels[0]
    path.write_text(json.dumps(doc))
    out = failing(build)
    assert "train/dataset.json: not in shard order: entry 1 is" in out
    gone = labels.pop(5)
    labels.append(["stray.png", 0])
    path.write_text(json.dumps(doc))
    out = failing(build)
    assert f"train/dataset.json: {gone[0]}: sample is in the shards but not in dataset.json" in out
    assert "train/dataset.json: stray.png: listed but not in any shard of the split" in out
    path.write_text("[]")
    out = failing(build)
    assert "train/dataset.json: not of the form" in out


def test_classes_json_and_skipped_mismatch(build):
    (build / "classes.json").write_text(json.dumps({"classes": ["a", "b"]}))
    (build / "skipped.jsonl").write_text('{"path": "x.png", "reason": "zero-byte file"}\n')
    out = failing(build)
    assert "classes.json: classes differ" in out
    assert "skipped.jsonl: lists 1 files, manifest says 0 were skipped" in out


def test_every_problem_is_listed_at_once(build):
    (build / "train/train-000002.tar").unlink()
    rel = "test/test-000000.tar"
    key = read_samples(build / rel)[2][0]
    off, size = member_offsets(build / rel)[f"{key}.png"]
    flip(build / rel, off + size // 2)
    shutil.copy(build / "train/train-000000.tar", build / "train/extra.tar")
    out = failing(build)
    assert "train/train-000002.tar: missing" in out
    assert f"{rel}: {key}: image does not decode" in out
    assert "train/extra.tar: shard not listed" in out
    assert out.splitlines()[-1].startswith("FAILED: ")


def test_same_result_with_one_and_two_workers(build):
    rel = "train/train-000001.tar"
    key = read_samples(build / rel)[11][0]
    off, size = member_offsets(build / rel)[f"{key}.png"]
    flip(build / rel, off + size // 3)
    one = verify(str(build), workers=1)
    two = verify(str(build), workers=2)
    assert one.problems == two.problems and one.problems


def test_any_fsspec_url(small_build):
    """verify reads only through fsspec: a copy in fsspec's memory filesystem verifies the same."""
    mem = fsspec.filesystem("memory")
    root = "/shardgen-verify-test"
    for dirpath, _, files in os.walk(small_build):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), small_build)
            mem.pipe(f"{root}/{rel}", Path(dirpath, f).read_bytes())
    try:
        r = verify(f"memory://{root}", workers=2)
        assert r.ok, format_result(r)
        assert r.samples == 120 and r.shards == 5
        rel = "train/train-000000.tar"
        data = bytearray(mem.cat(f"{root}/{rel}"))
        off, size = member_offsets(small_build / rel)[read_samples(small_build / rel)[5][0] + ".png"]
        data[off + size // 2] ^= 0xFF
        mem.pipe(f"{root}/{rel}", bytes(data))
        mem.pipe(f"{root}/test/test-000042.tar", b"x" * 1024)
        r = verify(f"memory://{root}", workers=1)
        text = format_result(r)
        assert not r.ok
        assert f"{rel}: xxh64 is" in text and "test/test-000042.tar: shard not listed" in text
    finally:
        mem.rm(root, recursive=True)


def test_reader_matches_tarfile(small_build):
    """The shard reader yields exactly what the standard library's tarfile sees."""
    path = small_build / "train/train-000000.tar"
    with tarfile.open(path) as t:
        want = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    with open(path, "rb") as f:
        got = [(m.name, m.data) for m in TarReader(f).members()]
    assert got == want


def test_http_url(small_build):
    """Over http(s):// (no folder listing) everything but the unlisted-shard search is checked."""
    pytest.importorskip("aiohttp")
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(small_build)))
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        p = run_cli("verify", url, "--progress", "false")
        assert p.returncode == 0, p.stdout + p.stderr
        assert p.stdout.startswith("OK: 120 samples") and "http(s) cannot list folders" in p.stdout
        p = run_cli("verify", url + "/nothing-here", "--progress", "false")
        assert p.returncode == 2 and "no such build folder" in p.stderr
    finally:
        srv.shutdown()
        srv.server_close()
