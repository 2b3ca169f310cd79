"""The library versions the bytes depend on: recorded in every manifest, checked on resume, shown."""

from __future__ import annotations

import json
import shutil

import PIL

from conftest import run_cli
from shardgen.imaging.codecs import codec_versions


def test_manifest_records_the_codec_versions_and_info_and_verify_show_them(small_build):
    m = json.loads((small_build / "manifest.json").read_text())
    codecs = m["config"]["codecs"]
    assert codecs == codec_versions().to_json()
    assert codecs["pillow"] == PIL.__version__ and codecs["libdeflate"] == m["image"]["encoder"]["version"]
    assert {"numpy", "deflate", "zlib"} <= set(codecs)
    # The dataset card shows the options, not the library versions.
    assert '"codecs"' not in (small_build / "README.md").read_text()
    p = run_cli("info", small_build, check=True)
    assert f"codecs:  pillow {PIL.__version__}" in p.stdout
    p = run_cli("info", small_build, "--json", check=True)
    assert json.loads(p.stdout)["codecs"] == codecs
    p = run_cli("verify", small_build, "--decode", "false", "--progress", "false", check=True)
    assert len(p.stdout.strip().splitlines()) == 1 and f"built with pillow {PIL.__version__}, " in p.stdout


def test_rerun_with_other_codec_versions_is_refused_unless_overwrite(sample_src, small_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small_build, out)
    m = json.loads((out / "manifest.json").read_text())
    m["config"]["codecs"]["pillow"] = "9.9.9"
    (out / "manifest.json").write_text(json.dumps(m))
    opts = ["--size", "64", "--shard_size", "25", "--workers", "2", "--progress", "false"]
    p = run_cli("build", sample_src, out, *opts)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    line = p.stderr.strip()
    assert "\n" not in line and f"made with pillow 9.9.9, but this machine has pillow {PIL.__version__}" in line
    assert "--overwrite" in line
    run_cli("build", sample_src, out, *opts, "--overwrite", check=True)
    assert json.loads((out / "manifest.json").read_text())["config"]["codecs"] == codec_versions().to_json()
    for f in ("manifest.json", "train/train-000000.tar"):
        assert (out / f).read_bytes() == (small_build / f).read_bytes()


def test_a_build_made_before_codecs_were_recorded_is_kept_not_refused(sample_src, small_build, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(small_build, out)
    m = json.loads((out / "manifest.json").read_text())
    del m["config"]["codecs"]
    (out / "manifest.json").write_text(json.dumps(m))
    run_cli("build", sample_src, out, "--size", "64", "--shard_size", "25", "--workers", "2", "--progress", "false",
            check=True)
    assert (out / "manifest.json").read_bytes() == (small_build / "manifest.json").read_bytes()
