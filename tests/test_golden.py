"""The output bytes of a fixed build, pinned: a refactoring that changes them fails here.

The expected digests were recorded once, when issue 9 changed the key and split rules and
issue 15 changed the PNG encoder (libdeflate), and they hold across the format/build
restructuring of issue 10. They depend on the pinned Pillow, numpy and deflate
(constraints.txt): a deliberate change of output bytes updates them here, in the same
commit, with the reason. Issue 12 added ``config.codecs`` (the library versions) to the
manifest, so ``manifest.json``'s digest also depends on which of them are installed
(pydicom); no shard changed.
"""

from __future__ import annotations

import xxhash

from conftest import run_cli, sample_tool

GOLDEN = {
    "README.md": "b05d6f21b11af898",
    "classes.json": "725f9b498b4ca6d6",
    "duplicates.jsonl": "a1abb5d36132b2f3",
    "manifest.json": "b57e5cae88031bbc",
    "skipped.jsonl": "516da43ab86dc177",
    "test/dataset.json": "e52bc73906e0064a",
    "test/test-000000.tar": "1a69f023cdf3cb0b",
    "test/test-000001.tar": "fb1b5acf0e3bb0c7",
    "test/test.wids.json": "4ddb65e1e2128f7c",
    "train/dataset.json": "40eb5d154dcb8be0",
    "train/train-000000.tar": "cc0fab0da7dfcdfb",
    "train/train-000001.tar": "5ceffd52e85145d0",
    "train/train-000002.tar": "6c945d0cdd8e48d4",
    "train/train-000003.tar": "adcaeded934bb16d",
    "train/train-000004.tar": "4867a3f18d31bc3f",
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
