"""``shardgen stylegan``: the export is read back with StyleGAN2-ADA's own loading rules.

:class:`StyleGANImageFolder` re-implements what ``training/dataset.py`` (``Dataset`` and
``ImageFolderDataset``) of NVlabs/stylegan2-ada-pytorch does with ``--data=X.zip`` or a
folder, and ``train.py --cond=1`` on top:

- the file list: ``zipfile.ZipFile(path).namelist()`` or ``os.walk`` relative paths; the
  images are the names whose lower-cased extension is in ``PIL.Image.EXTENSION``, sorted;
- the shape: ``[len(images)] + shape of image 0`` (CHW), and every image must have it;
  an image is ``np.array(PIL.Image.open(f))``, HW grayscale becomes HW1, then CHW;
- labels: ``dataset.json`` ``["labels"]`` -> ``dict`` -> looked up for every image name
  (``KeyError`` if one is missing), ``np.array(...).astype(int64)`` for 1-D labels, all
  ``>= 0``; ``label_shape = [max + 1]``; ``--cond=1`` needs labels present;
- the networks: ``resolution >= 4`` and a power of two, square.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from conftest import run_cli


class StyleGANImageFolder:
    """StyleGAN2-ADA's ImageFolderDataset loading rules, without torch or dnnlib."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.zip = None
        if os.path.isdir(path):
            self.all_fnames = {os.path.relpath(os.path.join(root, f), start=path)
                               for root, _dirs, files in os.walk(path) for f in files}
        elif os.path.splitext(path)[1].lower() == ".zip":
            self.zip = zipfile.ZipFile(path)
            self.all_fnames = set(self.zip.namelist())
        else:
            raise IOError("Path must point to a directory or zip")
        PIL.Image.init()
        self.image_fnames = sorted(f for f in self.all_fnames
                                   if os.path.splitext(f)[1].lower() in PIL.Image.EXTENSION)
        if not self.image_fnames:
            raise IOError("No image files found in the specified path")
        self.raw_shape = [len(self.image_fnames)] + list(self.load_raw_image(0).shape)

    def open_file(self, fname: str):
        if self.zip is None:
            return open(os.path.join(self.path, fname), "rb")
        return self.zip.open(fname, "r")

    def load_raw_image(self, idx: int) -> np.ndarray:
        with self.open_file(self.image_fnames[idx]) as f:
            image = np.array(PIL.Image.open(f))
        if image.ndim == 2:
            image = image[:, :, np.newaxis]  # HW => HWC
        return image.transpose(2, 0, 1)  # HWC => CHW

    def load_raw_labels(self) -> np.ndarray | None:
        if "dataset.json" not in self.all_fnames:
            return None
        with self.open_file("dataset.json") as f:
            labels = json.load(f)["labels"]
        if labels is None:
            return None
        labels = dict(labels)
        labels = [labels[fname.replace("\\", "/")] for fname in self.image_fnames]
        labels = np.array(labels)
        return labels.astype({1: np.int64, 2: np.float32}[labels.ndim])

    def __getitem__(self, idx: int) -> tuple[np.ndarray, int]:
        image = self.load_raw_image(idx)
        assert list(image.shape) == self.raw_shape[1:]
        assert image.dtype == np.uint8
        return image, int(self.labels[idx])

    def check(self) -> None:
        """What train.py and the networks require before training starts."""
        c, h, w = self.raw_shape[1:]
        assert h == w, "resolution must be square"
        assert h >= 4 and h & (h - 1) == 0, "resolution must be a power of two >= 4"
        assert c == 1, "one channel (grayscale)"
        self.labels = self.load_raw_labels()
        assert self.labels is not None, "--cond=True requires labels specified in dataset.json"
        assert self.labels.shape == (self.raw_shape[0],) and self.labels.dtype == np.int64
        assert np.all(self.labels >= 0)

    @property
    def label_dim(self) -> int:
        return int(np.max(self.labels)) + 1


def manifest(b: Path) -> dict:
    return json.loads((b / "manifest.json").read_text())


def shard_samples(b: Path, splits: list[str]) -> list[tuple[str, int, np.ndarray]]:
    """(key, label, pixels) of the splits' samples in shard order, read with tarfile."""
    out = []
    m = manifest(b)
    for sp in splits:
        for sh in m["splits"][sp]["shards"]:
            with tarfile.open(b / sh["path"]) as t:
                members = {mb.name: t.extractfile(mb).read() for mb in t.getmembers()}
            for k in dict.fromkeys(n.split(".", 1)[0] for n in members):
                out.append((k, int(members[f"{k}.cls"]),
                            np.asarray(PIL.Image.open(io.BytesIO(members[f"{k}.png"])))))
    return out


def check_export(path: Path, build: Path, splits: list[str]) -> StyleGANImageFolder:
    ds = StyleGANImageFolder(str(path))
    ds.check()
    want = shard_samples(build, splits)
    m = manifest(build)
    assert ds.raw_shape == [len(want), 1, m["image"]["size"], m["image"]["size"]]
    assert ds.label_dim == len(m["classes"])
    for i, (key, label, pixels) in enumerate(want):
        assert ds.image_fnames[i] == f"{i // 1000:05d}/img{i:08d}.png"
        image, lbl = ds[i]
        assert lbl == label, (i, key)
        assert np.array_equal(image[0], pixels), (i, key)
    # dataset.json lists the images in order, nothing else is an image
    with ds.open_file("dataset.json") as f:
        names = [n for n, _ in json.load(f)["labels"]]
    assert names == ds.image_fnames
    assert ds.all_fnames - set(ds.image_fnames) == {"dataset.json"}
    return ds


def test_zip_export_reads_back_with_stylegan_rules(small_build, tmp_path):
    dest = tmp_path / "train64.zip"
    p = run_cli("stylegan", small_build, "--split", "train", "--dest", dest, "--progress", "false")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"wrote {dest} (zip,")
    check_export(dest, small_build, ["train"])
    with zipfile.ZipFile(dest) as z:
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert all(not n.endswith("/") for n in z.namelist())
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_folder_export_and_all_splits(small_build, tmp_path):
    dest = tmp_path / "sg"
    p = run_cli("stylegan", small_build, "--split", "all", "--dest", f"{dest}/", "--progress", "false")
    assert p.returncode == 0, p.stderr
    splits = list(manifest(small_build)["splits"])
    ds = check_export(dest, small_build, splits)
    assert ds.raw_shape[0] == 120
    assert sorted(os.listdir(dest)) == ["00000", "dataset.json"]


def test_archive_names_follow_dataset_tool():
    from shardgen.commands.stylegan import archive_name

    assert archive_name(0) == "00000/img00000000.png"
    assert archive_name(999) == "00000/img00000999.png"
    assert archive_name(1000) == "00001/img00001000.png"
    assert archive_name(21164) == "00021/img00021164.png"


@pytest.mark.slow
def test_more_than_1000_images_fill_a_second_folder(tmp_path):
    """1,012 images: 00000/ holds 1000, 00001/ the rest; sorted names = export order."""
    src = tmp_path / "src"  # ImageFolder layout, small distinct images (fast to make)
    rng = np.random.default_rng(3)
    for c in ("a", "b", "c", "d"):
        (src / c).mkdir(parents=True)
        for i in range(253):
            PIL.Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(src / c / f"{i}.png")
    out = tmp_path / "b"
    run_cli("build", src, out, "--size", "16", "--shard_size", "300", "--workers", "2",
            "--progress", "false", check=True)
    dest = tmp_path / "all16.zip"
    p = run_cli("stylegan", out, "--split", "all", "--dest", dest, "--progress", "false")
    assert p.returncode == 0, p.stderr
    ds = check_export(dest, out, list(manifest(out)["splits"]))
    assert ds.raw_shape == [1012, 1, 16, 16]
    assert ds.image_fnames[999] == "00000/img00000999.png"
    assert ds.image_fnames[1000] == "00001/img00001000.png"
    assert ds.image_fnames[-1] == "00001/img00001011.png"


def test_zip_is_deterministic_and_overwrite_is_explicit(small_build, tmp_path):
    dest = tmp_path / "a.zip"
    assert run_cli("stylegan", small_build, "--dest", dest, "--progress", "false").returncode == 0
    first = dest.read_bytes()
    p = run_cli("stylegan", small_build, "--dest", dest, "--progress", "false")
    assert p.returncode == 2 and "--overwrite true" in p.stderr
    p = run_cli("stylegan", small_build, "--dest", dest, "--overwrite", "true", "--progress", "false")
    assert p.returncode == 0, p.stderr
    assert dest.read_bytes() == first


def test_uncompressed_pngs_like_dataset_tool(small_build, tmp_path):
    dest = tmp_path / "u.zip"
    p = run_cli("stylegan", small_build, "--split", "test", "--dest", dest, "--uncompressed", "true",
                "--progress", "false")
    assert p.returncode == 0, p.stderr
    check_export(dest, small_build, ["test"])
    with zipfile.ZipFile(dest) as z:
        data = z.read("00000/img00000000.png")
    assert len(data) > 64 * 64  # stored, not deflated


def test_non_power_of_two_is_refused(sample_src, tmp_path):
    out = tmp_path / "b48"
    run_cli("build", sample_src, out, "--size", "48", "--workers", "2", "--progress", "false", check=True)
    dest = tmp_path / "x.zip"
    p = run_cli("stylegan", out, "--dest", dest, "--progress", "false")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "power-of-two" in p.stderr and "48x48" in p.stderr and "--size 32 or --size 64" in p.stderr
    assert "Traceback" not in p.stderr
    assert not dest.exists() and os.listdir(tmp_path) == ["b48"]


@pytest.mark.parametrize("dest,msg", [("x.tar", "must end in .zip"), ("nowhere/x.zip", "does not exist")])
def test_bad_dest(small_build, tmp_path, dest, msg):
    p = run_cli("stylegan", small_build, "--dest", dest, "--progress", "false", cwd=str(tmp_path))
    assert p.returncode == 2 and msg in p.stderr and "Traceback" not in p.stderr


def test_non_empty_folder_and_unknown_split(small_build, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    p = run_cli("stylegan", small_build, "--dest", f"{tmp_path / 'full'}/", "--progress", "false")
    assert p.returncode == 2 and "not empty" in p.stderr
    p = run_cli("stylegan", small_build, "--split", "val", "--dest", tmp_path / "v.zip", "--progress", "false")
    assert p.returncode == 2 and "no split 'val'" in p.stderr
    assert not (tmp_path / "v.zip").exists()
