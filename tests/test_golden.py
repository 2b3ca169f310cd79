"""The output bytes of a fixed build, pinned: a refactoring that changes them fails here.

The expected digests were recorded once, when issue 9 changed the key and split rules and
issue 15 changed the PNG encoder (libdeflate), and they hold across the format/build
restructuring of issue 10. They depend on the pinned Pillow, numpy and deflate
(constraints.txt): a deliberate change of output bytes updates them here, in the same
commit, with the reason. Issue 12 added ``config.codecs`` (the library versions) to the
manifest, so ``manifest.json``'s digest also depends on which of them are installed
(pydicom); no shard changed. Issue 13 changed the PNG row filter from Average to Up (a
numpy decoder in the loaders undoes it ~2x faster than Pillow): every shard, the
manifest and the README changed; each sample's pixels and every other member are the
same as before. Issue 24 made large JPEGs decode at libjpeg's DCT scale (``jpeg_draft``,
on by default and recorded in the config): the two shards holding the sample's JPEGs, the
manifest and the README changed; with ``--jpeg_draft false`` every shard is as before.
"""

from __future__ import annotations

import xxhash

from conftest import run_cli, sample_tool

GOLDEN = {
    "README.md": "53ccc72db899c54d",
    "classes.json": "725f9b498b4ca6d6",
    "duplicates.jsonl": "a1abb5d36132b2f3",
    "manifest.json": "9ccfba4e4eedd35f",
    "skipped.jsonl": "516da43ab86dc177",
    "test/dataset.json": "e52bc73906e0064a",
    "test/test-000000.tar": "aec16e1feaebc980",
    "test/test-000001.tar": "53b6e65ae2c2afc2",
    "test/test.wids.json": "4ddb65e1e2128f7c",
    "train/dataset.json": "40eb5d154dcb8be0",
    "train/train-000000.tar": "1624af96f7a3e285",
    "train/train-000001.tar": "75305a265d4c8bca",
    "train/train-000002.tar": "e9b786e143deec11",
    "train/train-000003.tar": "92a51262bcc8cf68",
    "train/train-000004.tar": "3169603d8c6e9a48",
    "train/train.wids.json": "cc0b408ef5de2fe5",
}


def test_fixed_build_gives_the_recorded_bytes(tmp_path):
    base = sample_tool.make_dataset(str(tmp_path / "src"), {c: 10 for c in sample_tool.FULL_COUNTS}, seed=11,
                                    hostile=True, workers=1)
    out = tmp_path / "out"
    run_cli("build", base, out, "--size", "32", "--shard_size", "9", "--workers", "2", "--progress", "false",
            check=True)
    got = {str(p.relative_to(out)): xxhash.xxh64_hexdigest(p.read_bytes())
           for p in sorted(out.rglob("*")) if p.is_file()}
    assert got == GOLDEN
