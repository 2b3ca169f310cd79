"""The end of a build: the metadata files around the shards, and ``manifest.json`` last.

Order of writes (each atomic): stale shards of an earlier, larger plan removed;
``classes.json``; each split's ``dataset.json``; ``skipped.jsonl``; ``duplicates.jsonl``;
the readers' files (``README.md`` dataset card, wids indexes); ``manifest.json``; then the
scratch folder is removed. A folder with a manifest is a complete build.
"""

from __future__ import annotations

import os
import shutil

from .. import __version__
from ..format import (CLASSES, DATASET_JSON, DUPLICATES, MANIFEST, MULTILABEL, SINGLE, SKIPPED, ImageSpec, Manifest,
                     ShardEntry, SplitEntry, atomic_write, atomic_write_bytes, atomic_write_json, dump_json)
from ..imaging.image import encoder_info
from .outdir import remove_stale
from .plan import Plan
from ..format.companions import write_reader_files

__all__ = ["finish_build"]


def _manifest(cfg, fp: dict, classes: list[str], plan: Plan, shard_recs: dict[str, dict], report: dict,
              skipped: int) -> Manifest:
    splits = {}
    for name, sp in plan.splits.items():
        shards = tuple(ShardEntry(j.relpath, shard_recs[j.relpath]["samples"], shard_recs[j.relpath]["bytes"],
                                  shard_recs[j.relpath]["xxh64"], j.pixels_xxh64) for j in sp.shards)
        splits[name] = SplitEntry(sum(s.samples for s in shards), dict(sp.counts), shards)
    image = ImageSpec(cfg.size, "L", cfg.format, {"encoder": encoder_info()})
    return Manifest(classes=tuple(classes), image=image, splits=splits,
                    skipped=skipped, report=report, config=fp, shardgen_version=__version__,
                    task=MULTILABEL if cfg.multilabel else SINGLE)


def finish_build(cfg, out: str, work: str, fp: dict, classes: list[str], plan: Plan,
                 shard_recs: dict[str, dict], scan_result, excluded: int) -> Manifest:
    """Write everything but the shards, manifest last; returns the manifest as written.

    Args:
        cfg: the :class:`~shardgen.build.config.BuildConfig`.
        out, work: the build folder and its scratch folder (removed at the end).
        fp: the config fingerprint (the manifest's ``config``).
        classes: class names in label order.
        plan: the build's :class:`~shardgen.build.assemble.Plan`.
        shard_recs: shard relpath -> ``{"samples", "bytes", "xxh64"}`` as written.
        scan_result: the :class:`~shardgen.sources.items.ScanResult` (skips found by the scan, layout).
        excluded: images left out because their class is not in ``--classes``.
    """
    remove_stale(out, set(plan.shard_relpaths()), list(plan.splits))
    atomic_write_json(os.path.join(out, CLASSES), {"classes": classes})
    for name, sp in plan.splits.items():
        os.makedirs(os.path.join(out, name), exist_ok=True)
        with atomic_write(os.path.join(out, name, DATASET_JSON)) as f:
            for part in plan.dataset_json(name):
                f.write(part)
    skips = sorted(list(scan_result.skipped) + plan.skips, key=lambda s: s.path)
    atomic_write_bytes(os.path.join(out, SKIPPED), b"".join(dump_json(s.to_json(), indent=None) for s in skips))
    atomic_write_bytes(os.path.join(out, DUPLICATES), b"".join(dump_json(d, indent=None) for d in plan.duplicates))
    report = dict(plan.report, layout=scan_result.layout, excluded_by_classes=excluded)
    manifest = _manifest(cfg, fp, classes, plan, shard_recs, report, len(skips))
    write_reader_files(out, manifest)  # README.md (Hugging Face datasets) and wids indexes
    atomic_write_json(os.path.join(out, MANIFEST), manifest.to_json())
    shutil.rmtree(work, ignore_errors=True)
    return manifest
