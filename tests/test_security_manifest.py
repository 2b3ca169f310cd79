"""A hostile manifest or shard is refused in one line before anything uses it (issue 22, item 1).

Each case edits a copy of a genuine build the way a hostile publisher could, and checks
the commands (``info``, ``verify``) and the loaders through their public entry points:
exit 1 (the build is at fault), one line naming the field and the escaped value, no
traceback, and nothing done with the bad value.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import xxhash

from conftest import run_cli
from shardgen.errors import InvalidBuild, ShardgenError


@pytest.fixture
def build(small_build, tmp_path) -> Path:
    """A private copy of the small build (64x64, 25 samples per shard)."""
    return Path(shutil.copytree(small_build, tmp_path / "b"))


def edit_manifest(b: Path, change) -> dict:
    m = json.loads((b / "manifest.json").read_text())
    change(m)
    (b / "manifest.json").write_text(json.dumps(m))
    return m


def refused(b: Path, *needles: str, command: str = "info") -> str:
    """Run ``command`` on ``b``: exit 1, one line, no traceback, each needle in the message."""
    p = run_cli(command, b, *(["--progress", "false"] if command == "verify" else []))
    out = p.stdout + p.stderr
    assert p.returncode == 1, out
    assert "Traceback" not in out and "\x1b" not in out, out
    for n in needles:
        assert n in out, (n, out)
    if command == "info":
        assert len(p.stderr.strip().splitlines()) == 1 and not p.stdout, out
    return out


def loader_refuses(b: Path, *needles: str) -> str:
    from loaders import make_loader

    with pytest.raises(InvalidBuild) as e:
        make_loader(str(b), "train", batch_size=4, num_workers=0, decoded_cache=None)
    msg = str(e.value)
    assert "\n" not in msg and "\x1b" not in msg
    for n in needles:
        assert n in msg, (n, msg)
    return msg


def first_shard(m: dict) -> dict:
    return m["splits"]["train"]["shards"][0]


@pytest.mark.parametrize("value", ["/tmp/x", "../../../tmp/x", "ABCDEF0123456789", "0123", "0123456789abcdef0"])
def test_checksum_that_is_not_16_hex_digits_is_refused(build, value):
    edit_manifest(build, lambda m: first_shard(m).__setitem__("xxh64", value))
    refused(build, "splits.train.shards[0].xxh64", repr(value))
    loader_refuses(build, "xxh64", repr(value))


def test_pixels_checksum_must_be_hex_too(build):
    edit_manifest(build, lambda m: first_shard(m).__setitem__("pixels_xxh64", "../x"))
    refused(build, "pixels_xxh64", "'../x'")


@pytest.mark.parametrize("path", ["../../etc/train-000000.tar", "train/../../x.tar", "train/%2e%2e/x.tar",
                                  "/abs/train-000000.tar", "train\\x.tar", "train/.hidden.tar",
                                  "train/x.pth", "test/test-000000.tar", "train/a/b.tar", "train/x\x1b[2J.tar"])
def test_shard_path_outside_its_split_folder_is_refused(build, path):
    edit_manifest(build, lambda m: first_shard(m).__setitem__("path", path))
    out = refused(build, "splits.train.shards[0].path")
    assert "\x1b" not in out
    loader_refuses(build, "splits.train.shards[0].path")


def test_a_shard_listed_twice_is_refused_not_trained_twice(build):
    def twice(m):
        sh = m["splits"]["train"]["shards"]
        sh.append(dict(sh[0]))
        m["splits"]["train"]["samples"] += sh[0]["samples"]
    edit_manifest(build, twice)
    refused(build, "is listed twice")
    loader_refuses(build, "is listed twice")
    # verify names it too (a FAILED line), instead of counting the shard twice
    p = run_cli("verify", build, "--progress", "false")
    assert p.returncode == 1 and "listed twice" in p.stdout + p.stderr and "Traceback" not in p.stderr


def test_a_shard_listed_in_two_splits_is_refused(build):
    def both(m):
        m["splits"]["test"]["shards"].append(dict(first_shard(m), path=first_shard(m)["path"]))
    edit_manifest(build, both)
    refused(build)


def test_a_billion_samples_is_refused_at_once_without_allocating(build):
    edit_manifest(build, lambda m: first_shard(m).__setitem__("samples", 10**9))
    t0 = time.monotonic()
    out = refused(build, "splits.train.shards[0].samples", "cannot fit")
    assert time.monotonic() - t0 < 20, out
    loader_refuses(build, "cannot fit")


def test_sample_counts_that_disagree_are_refused(build):
    edit_manifest(build, lambda m: m["splits"]["train"].__setitem__("samples", 7))
    refused(build, "splits.train.samples")


def test_more_samples_than_a_build_may_have_is_refused(build):
    def huge(m):
        sh = first_shard(m)
        sh["samples"], sh["bytes"] = 200_000_000, 200_000_000 * 2048
        m["splits"]["train"]["samples"] = sum(s["samples"] for s in m["splits"]["train"]["shards"])
    edit_manifest(build, huge)
    refused(build, "more than the 100,000,000")


def test_class_count_out_of_range_is_refused(build):
    edit_manifest(build, lambda m: m["splits"]["train"]["class_counts"].__setitem__("COVID", 10**12))
    refused(build, "class_counts")


def test_class_name_with_terminal_escapes_is_refused_and_escaped(build):
    edit_manifest(build, lambda m: m["classes"].__setitem__(0, "COVID\x1b]0;pwned\x07\x1b[2J"))
    out = refused(build, "classes[0]", "control characters")
    assert "\x07" not in out and "\\x1b" in out


@pytest.mark.parametrize("field,value", [("ext", "pth"), ("ext", "../x"), ("mode", "RGB"), ("size", 10**9),
                                         ("size", 0)])
def test_image_fields_outside_the_allow_list_are_refused(build, field, value):
    edit_manifest(build, lambda m: m["image"].__setitem__(field, value))
    refused(build, f"image.{field}")


def test_manifest_larger_than_the_cap_is_refused_without_reading_it_whole(build):
    with open(build / "manifest.json", "r+b") as f:  # sparse: 300 MiB of NULs after the JSON
        f.truncate(300 << 20)
    refused(build, "larger than 256 MiB")


def test_split_names_are_checked(build):
    def rename(m):
        m["splits"]["../x"] = m["splits"].pop("test")
    edit_manifest(build, rename)
    refused(build, "bad split name")


# -- tar members ------------------------------------------------------------------------------------------
def rewrite_shard(b: Path, rel: str, members: list[tuple[str, bytes]], size_field: dict | None = None) -> None:
    """Replace shard ``rel`` with a ustar tar of ``members`` and fix its manifest entry
    (bytes, xxh64), so that only the members are hostile."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    raw = bytearray(buf.getvalue())
    if size_field:
        raw = patch_size(raw, **size_field)
    (b / rel).write_bytes(bytes(raw))

    def fix(m):
        for s in m["splits"].values():
            for sh in s["shards"]:
                if sh["path"] == rel:
                    sh["bytes"], sh["xxh64"] = len(raw), xxhash.xxh64_hexdigest(bytes(raw))
                    sh.pop("pixels_xxh64", None)
    edit_manifest(b, fix)


def patch_size(raw: bytearray, member: int, size: int) -> bytearray:
    """Set the size field of the ``member``-th header (0-based) to ``size`` (GNU base-256) and fix its checksum."""
    off, n = 0, 0
    while True:
        h = raw[off:off + 512]
        real = int(h[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
        if n == member:
            field = bytes([0x80]) + size.to_bytes(11, "big")
            raw[off + 124:off + 136] = field
            raw[off + 148:off + 156] = b" " * 8
            chk = sum(raw[off:off + 512])
            raw[off + 148:off + 156] = f"{chk:06o}\0 ".encode()
            return raw
        off += 512 + (real + 511) // 512 * 512
        n += 1


def genuine_members(b: Path, rel: str) -> list[tuple[str, bytes]]:
    with tarfile.open(b / rel) as tf:
        return [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]


def test_member_with_a_path_in_its_name_stops_the_loader_in_one_line(build):
    m = json.loads((build / "manifest.json").read_text())
    rel = first_shard(m)["path"]
    members = genuine_members(build, rel)
    key = members[0][0].split(".", 1)[0]
    members = [(n.replace(key, "../../evil", 1) if n.startswith(key + ".") else n, d) for n, d in members]
    rewrite_shard(build, rel, members)
    from loaders import make_loader

    loader = make_loader(str(build), "train", batch_size=4, num_workers=0, mode="eval", decoded_cache=None,
                         with_keys=True)
    with pytest.raises(ShardgenError) as e:
        for _ in loader:
            pass
    assert "evil" in str(e.value) and "\n" not in str(e.value)
    p = run_cli("verify", build, "--progress", "false")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "evil" in p.stdout


def test_member_claiming_100_GB_is_one_line_not_a_memory_error(build):
    m = json.loads((build / "manifest.json").read_text())
    rel = first_shard(m)["path"]
    rewrite_shard(build, rel, genuine_members(build, rel), size_field={"member": 0, "size": 100 << 30})
    p = run_cli("verify", build, "--progress", "false")
    out = p.stdout + p.stderr
    assert p.returncode == 1 and "Traceback" not in out and "MemoryError" not in out, out
    assert "a member of 107,374,182,400 bytes" in out, out
    from loaders import make_loader

    loader = make_loader(str(build), "train", batch_size=4, num_workers=0, mode="eval", decoded_cache=None)
    with pytest.raises(ShardgenError) as e:
        for _ in loader:
            pass
    assert "107,374,182,400" in str(e.value) or "xxh64" in str(e.value)
