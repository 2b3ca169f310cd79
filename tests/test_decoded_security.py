"""Issue 22: the decoded cache is private, its entries checked, its labels in range.

Hostile cases, each compared with the batches of the genuine build read without the
cache: another local user (``nobody``, via ``setpriv``; skipped where that is not
possible) who made the default folder first and planted entries or symlinks in it; an
entry edited on disk (labels 7, 2**31-1, -100 in a 4-class build, changed pixels, key
and a valid but wrong label); another shard's entry copied or symlinked under a shard's
name; a multi-hot entry with target bytes edited; entries filled by a ``verify=False``
loader from shards changed in place; a ``decoded_cache=`` folder that is not private.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import socket
import stat
import struct
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from test_multilabel import make_nih, nih_build

from loaders import StyleGANShards, UsageError, make_loader
from loaders.read.decoded.place import ENV_PLACE

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
SIZE = 32


# ----------------------------------------------------------------------------- builds and helpers

@pytest.fixture(scope="module")
def build(sample_src, tmp_path_factory) -> Path:
    """96 train samples in 5 shards (20, 20, 20, 20, 16), 32x32, 4 classes."""
    out = tmp_path_factory.mktemp("decsec") / "out"
    run_cli("build", sample_src, out, "--size", SIZE, "--shard_size", "20", "--workers", "2",
            "--progress", "false", check=True)
    return out


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decsec-multi")
    src = root / "src"
    src.mkdir()
    make_nih(src)
    out = root / "out"
    nih_build(src, out)
    return out


@pytest.fixture(autouse=True)
def alone(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


@pytest.fixture(scope="module")
def nobody():
    """Run commands as the second local user ``nobody`` (skips where that is not possible)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as a second local user")
    if subprocess.run(NOBODY + ["true"], capture_output=True).returncode != 0:
        pytest.skip("setpriv cannot switch to nobody here")

    def run(*cmd):
        subprocess.run(NOBODY + [str(c) for c in cmd], check=True, capture_output=True)
    return run


@pytest.fixture
def shm():
    """A folder like /dev/shm: world-writable and sticky, reachable by every local user."""
    d = Path(tempfile.mkdtemp(prefix="sg-shm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else "/tmp"))
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def epochs_of(build, cache, workers=0, epochs=1, **kw):
    """Every batch of ``epochs`` eval epochs, as ``(images, labels, keys)`` copies."""
    loader = make_loader(build, batch_size=8, mode="eval", num_workers=workers, with_keys=True,
                         decoded_cache=cache, **kw)
    out = []
    for e in range(epochs):
        loader.set_epoch(e)
        out.append([(x.clone(), y.clone(), list(k)) for x, y, k in loader])
    loader.close()
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for ea, eb in zip(a, b):
        assert len(ea) == len(eb) > 0
        for (x1, y1, k1), (x2, y2, k2) in zip(ea, eb):
            assert k1 == k2
            assert torch.equal(y1, y2), (k1, y1, y2)
            assert torch.equal(x1, x2), k1


def shards_of(build: Path, split: str = "train") -> list[dict]:
    return json.loads((build / "manifest.json").read_text())["splits"][split]["shards"]


def names_of(build: Path, tail: str = "4c") -> list[str]:
    return [f"{s['xxh64']}-{s['bytes']}-{SIZE}px-{tail}.dec" for s in shards_of(build)]


def layout(path: Path) -> tuple[int, int, int, int]:
    """``(n, pixels, labels, keys)`` offsets of an entry of a single-label build, read from
    its header (the same in the entry formats before and after issue 22)."""
    head = json.loads(path.read_bytes()[8:4096].rstrip(b"\0"))
    n, s = head["n"], head["size"]
    return n, 4096, 4096 + n * s * s, 4096 + n * s * s + 4 * n


def edit(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: (os.readlink(p).encode() if p.is_symlink() else p.read_bytes()) for p in folder.iterdir()}


def doctored_copy(build: Path, dest: Path) -> Path:
    """A copy of ``build`` whose shards changed in place: the first sample of each shard
    has another label (same size, same manifest)."""
    shutil.copytree(build, dest)
    for s in shards_of(dest):
        with tarfile.open(dest / s["path"]) as t:
            cls = next(m for m in t.getmembers() if m.name.endswith(".cls"))
            old = t.extractfile(cls).read()
        edit(dest / s["path"], cls.offset_data, str((int(old) + 1) % 4).encode())
    return dest


def unverified() -> dict:
    """``verify=False`` where ``make_loader`` has it (it trusts shard bytes as they come)."""
    return {"verify": False} if "verify" in inspect.signature(make_loader).parameters else {}


def forge(build: Path, staging: Path) -> Path:
    """Entries with forged labels, made as another user's tools would: shardgen's own
    loader over a doctored copy, renamed and relabelled as entries of the genuine build."""
    bad = epochs_of(doctored_copy(build, staging / "doctored"), staging / "entries", **unverified())
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(bad[0], epochs_of(build, None)[0]))
    for p in list((staging / "entries").iterdir()):
        if p.name.endswith(".unverified.dec"):
            raw = bytearray(p.read_bytes())
            raw[:4096] = bytes(raw[:4096]).replace(b'"verified": false', b'"verified": true').ljust(4096, b"\0")
            p.write_bytes(bytes(raw))
            p.rename(p.with_name(p.name.replace(".unverified.dec", ".dec")))
    for p in [staging, *staging.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return staging / "entries"


# ----------------------------------------------------------------------------- another local user

def test_entries_another_user_planted_in_the_default_place_are_never_served(build, nobody, shm, monkeypatch,
                                                                             caplog):
    place = shm / "shardgen-victim"
    forged = forge(build, shm / "staging")
    nobody("mkdir", "-m", "0777", place)
    nobody("sh", "-c", 'cp "$0"/*.dec "$1"/', forged, place)
    before = files_of(place)
    assert len(before) == 5
    monkeypatch.setenv(ENV_PLACE, str(place))  # the default place, as /dev/shm/shardgen-<user> is
    ref = epochs_of(build, None)
    with caplog.at_level(logging.WARNING, logger="loaders"):
        assert_same(epochs_of(build, "auto"), ref)
    assert any(str(place) in r.getMessage() and "private folder" in r.getMessage() for r in caplog.records)
    assert_same(epochs_of(build, "auto", workers=2), epochs_of(build, None, workers=2))
    assert files_of(place) == before  # nothing there was used, written or removed
    # The cache went to a private folder of this user next to it, the same one each time.
    alt = [p for p in shm.iterdir() if p.name.startswith("shardgen-victim-")]
    assert len(alt) == 1
    st = alt[0].lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o700
    assert sorted(p.name for p in alt[0].glob("*.dec")) == sorted(names_of(build))


def test_symlinks_another_user_planted_never_make_the_loader_write_through_them(build, nobody, shm, tmp_path,
                                                                                 monkeypatch):
    """Before, the loader opened ``.tmp-<host>-<pid>-<entry>`` with O_TRUNC, following a
    symlink there: the victim's own files were truncated and overwritten."""
    place = shm / "shardgen-victim"
    nobody("mkdir", "-m", "0777", place)
    precious = tmp_path / "precious"
    precious.mkdir()
    host, pid = socket.gethostname(), os.getpid()  # num_workers=0: entries are made in this process
    for i, name in enumerate(names_of(build)):
        (precious / f"{i}.txt").write_text(f"the victim's own file {i}\n")
        nobody("ln", "-s", precious / f"{i}.txt", place / f".tmp-{host}-{pid}-{name}")
    monkeypatch.setenv(ENV_PLACE, str(place))
    assert_same(epochs_of(build, "auto"), epochs_of(build, None))
    for i in range(5):
        assert (precious / f"{i}.txt").read_bytes() == f"the victim's own file {i}\n".encode()


def test_a_folder_of_another_user_given_explicitly_is_refused(build, nobody, shm):
    theirs = shm / "dec"
    nobody("mkdir", "-m", "0755", theirs)
    with pytest.raises(UsageError) as e:
        make_loader(build, num_workers=0, decoded_cache=theirs)
    msg = str(e.value)
    assert "\n" not in msg and str(theirs) in msg and "belongs to user nobody" in msg
    assert "0700" in msg and "decoded_cache=None" in msg
    assert list(theirs.iterdir()) == []


# ----------------------------------------------------------------------------- the user's own folder

@pytest.mark.parametrize("kind", ["world-writable", "group-writable", "symlink"])
def test_a_folder_given_explicitly_that_is_not_private_is_refused(build, tmp_path, kind):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    folder = tmp_path / "dec"
    if kind == "symlink":
        folder.symlink_to(real, target_is_directory=True)
        want = "is a symbolic link"
    else:
        folder.mkdir()
        folder.chmod(0o777 if kind == "world-writable" else 0o770)
        want = f"is writable by other users (mode {0o777 if kind == 'world-writable' else 0o770:04o})"
    for make in (lambda: make_loader(build, num_workers=0, decoded_cache=folder),
                 lambda: StyleGANShards(build, decoded_cache=folder)):
        with pytest.raises(UsageError) as e:
            make()
        msg = str(e.value)
        assert "\n" not in msg and f"decoded_cache {folder}: {want}" in msg and "0700" in msg
    assert list(real.iterdir()) == [] and (kind == "symlink" or list(folder.iterdir()) == [])


def test_symlinks_in_the_users_own_folder_are_never_followed(build, tmp_path):
    """A symlink under an entry's name (to another shard's entry elsewhere) is replaced by
    a real entry, never read or written; leftovers at the temporary names of before are
    never opened."""
    place, other, precious = tmp_path / "dec", tmp_path / "other", tmp_path / "precious"
    place.mkdir(mode=0o700)
    precious.mkdir()
    ref = epochs_of(build, None)
    assert_same(epochs_of(build, other), ref)  # genuine entries in another folder of the user
    names = names_of(build)
    theirs = (other / names[1]).read_bytes()
    (place / names[0]).symlink_to(other / names[1])  # same size: 20 samples each
    host, pid = socket.gethostname(), os.getpid()
    for i, name in enumerate(names[1:], 1):
        (precious / f"{i}.txt").write_text(f"own file {i}\n")
        (place / f".tmp-{host}-{pid}-{name}").symlink_to(precious / f"{i}.txt")
    assert_same(epochs_of(build, place, epochs=2), ref * 2)
    assert not (place / names[0]).is_symlink() and (place / names[0]).is_file()
    assert (other / names[1]).read_bytes() == theirs
    assert all((precious / f"{i}.txt").read_bytes() == f"own file {i}\n".encode() for i in range(1, 5))


@pytest.mark.parametrize("workers", [0, 2])
def test_an_entry_edited_on_disk_is_never_served(build, tmp_path, workers):
    place = tmp_path / "dec"
    ref = epochs_of(build, None, workers)
    assert_same(epochs_of(build, place, workers), ref)  # fills every entry
    path = place / names_of(build)[0]
    n, pix, lab, keys = layout(path)
    genuine = [int(v) for v in ref[0][0][1]]  # shard 0 holds the first 20 samples (eval order)
    for i, value in enumerate([7, 2**31 - 1, -100, (genuine[3] + 1) % 4]):  # the last one: a valid class
        edit(path, lab + 4 * i, struct.pack("<i", value))
    px = path.read_bytes()[pix + 4 * SIZE * SIZE:pix + 5 * SIZE * SIZE]
    edit(path, pix + 4 * SIZE * SIZE, bytes(255 - b for b in px))
    edit(path, keys + 64 * 5, b"forged-key".ljust(64, b"\0"))
    assert_same(epochs_of(build, place, workers), ref)
    # The refused samples were decoded again and stored: the entry holds them as built.
    raw = path.read_bytes()
    assert [struct.unpack_from("<i", raw, lab + 4 * i)[0] for i in range(4)] == genuine[:4]
    assert raw[pix + 4 * SIZE * SIZE:pix + 5 * SIZE * SIZE] == px
    assert_same(epochs_of(build, place, workers), ref)


def test_another_shards_entry_copied_under_a_shards_name_is_replaced(build, tmp_path):
    place = tmp_path / "dec"
    ref = epochs_of(build, None)
    assert_same(epochs_of(build, place), ref)
    names = names_of(build)
    shutil.copyfile(place / names[1], place / names[0])  # same size: 20 samples each
    assert_same(epochs_of(build, place), ref)
    head = json.loads((place / names[0]).read_bytes()[8:4096].rstrip(b"\0"))
    assert head["xxh64"] == shards_of(build)[0]["xxh64"]


def test_a_multi_hot_entry_edited_on_disk_is_never_served(multilabel, tmp_path):
    place = tmp_path / "dec"
    ref = epochs_of(multilabel, None)
    assert_same(epochs_of(multilabel, place), ref)
    classes = ref[0][0][1].shape[1]
    path = next(place.glob(f"*-{classes}m.dec"))
    head = json.loads(path.read_bytes()[8:4096].rstrip(b"\0"))
    lab = 4096 + head["n"] * head["size"] ** 2
    first = path.read_bytes()[lab:lab + 2 * classes]
    edit(path, lab, b"\2")  # not a 0/1 target
    edit(path, lab + classes + 1, bytes([1 - first[classes + 1]]))  # a valid byte, but not the built one
    assert_same(epochs_of(multilabel, place), ref)


def test_entries_of_an_unverified_loader_are_never_read_by_a_verifying_one(build, tmp_path):
    """``verify=False`` over shards changed in place (same size, same manifest) fills
    entries of its own; a verifying loader on the genuine build never serves them."""
    place = tmp_path / "dec"
    ref = epochs_of(build, None)
    bad = epochs_of(doctored_copy(build, tmp_path / "doctored"), place, **unverified())
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(bad[0], ref[0]))
    assert_same(epochs_of(build, place), ref)
    assert_same(epochs_of(build, place, workers=2), epochs_of(build, None, workers=2))
    if unverified():
        assert sorted(p.name for p in place.glob("*.unverified.dec")) == sorted(
            n.replace(".dec", ".unverified.dec") for n in names_of(build))


def test_entry_names_are_made_only_from_checked_checksums():
    from loaders.read.decoded.store import entry_name
    from shardgen.format import ShardEntry

    assert entry_name(ShardEntry("train/a.tar", 3, 9000, "0123456789abcdef"), 32, 4) == \
        "0123456789abcdef-9000-32px-4c.dec"
    for bad in ("../../../tmp/x", "/tmp/x", "0123456789abcdeg", "0123456789ABCDEF", "0" * 17):
        with pytest.raises(ValueError):
            entry_name(ShardEntry("train/a.tar", 3, 9000, bad), 32, 4)


def test_the_folder_is_checked_again_in_every_process(build, tmp_path):
    """A folder that stops being private after the loader was made (here: made
    world-writable) is not used by the workers: nothing is cached, the batches are right."""
    place = tmp_path / "dec"
    loader = make_loader(build, batch_size=8, mode="eval", num_workers=2, with_keys=True, decoded_cache=place)
    place.chmod(0o777)
    got = [[(x.clone(), y.clone(), list(k)) for x, y, k in loader]]
    loader.close()
    assert_same(got, epochs_of(build, None, workers=2))
    assert list(place.glob("*.dec")) == []
