"""The checks across shards, splits and the build's other files.

Keys unique across the build, no image in two splits, per-split sample and class counts,
each ``<split>/dataset.json``, unlisted shards, ``classes.json``, ``skipped.jsonl`` and
the readers' files (:func:`shardgen.format.companions.check_reader_files`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ...format import CLASSES, DATASET_JSON, MANIFEST, SKIPPED
from ...format.companions import check_reader_files
from ...storage import Build
from .result import Problem, VerifyResult
from .shards import ShardResult

__all__ = ["check_splits", "check_build_files"]


@dataclass
class _FirstSeen:
    """Where each key and each image was first seen, across all splits."""

    decode: bool
    keys: dict[str, str] = field(default_factory=dict)  # key -> shard
    images: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # digest -> (split, shard, key)

    def add(self, split: str, r: ShardResult, problems: list[Problem], counts: Counter[int]) -> None:
        """The shard's samples: a key seen before, an image seen in another split; count classes."""
        for key, cls, digest in r.samples:
            other = self.keys.get(key)
            if other is not None:
                problems.append(Problem(r.relpath, f"key is not unique: also in {other}", key))
            else:
                self.keys[key] = r.relpath
            if digest:
                first = self.images.setdefault(digest, (split, r.relpath, key))
                if first[0] != split:
                    same = "same image" if self.decode else "same image bytes"
                    problems.append(Problem(
                        r.relpath, f"{same} as {first[2]} in split {first[0]!r} ({first[1]})", key))
            counts[cls] += 1


def check_splits(build: Build, results: list[ShardResult], classes: tuple[str, ...], ext: str,
                 res: VerifyResult) -> None:
    """Add the shards' results to ``res``, split by split, with the checks across shards.

    Args:
        build: the build being verified.
        results: every listed shard's result, in manifest order.
        classes: the manifest's class names.
        ext: the image member's extension.
        res: what was found so far; problems, counts and totals are added to it.
    """
    seen = _FirstSeen(res.decode)
    for split, s in build.manifest.splits.items():
        mine = [r for r in results if r.split == split]
        counts: Counter[int] = Counter()
        for r in mine:
            res.problems.extend(r.problems)
            res.shards += r.complete
            res.bytes += r.bytes
            res.decoded += r.decoded
            res.pixel_digests += r.pixel_digest
            seen.add(split, r, res.problems, counts)
        res.splits[split] = sum(len(r.samples) for r in mine)
        listed = sum(sh.samples for sh in s.shards)
        if s.samples != listed:
            res.problems.append(Problem(MANIFEST, f"split {split!r} says {s.samples} samples but its "
                                                  f"shards list {listed}"))
        if all(r.complete for r in mine):
            res.problems.extend(_check_class_counts(split, s.class_counts, counts, classes))
        res.problems.extend(_check_dataset_json(build, split, mine, ext, s.samples or listed))


def _check_class_counts(split: str, cc: dict[str, int], counts: Counter[int],
                        classes: tuple[str, ...]) -> list[Problem]:
    want = {str(k): v for k, v in cc.items()}
    got: dict[str, int] = {}
    for c, v in counts.items():  # a class index, or a multi-label sample's tuple of them
        for i in (c if isinstance(c, tuple) else (c,) if c >= 0 else ()):
            got[classes[i]] = got.get(classes[i], 0) + v
    if want and {k: v for k, v in want.items() if v} != got:
        diff = ", ".join(f"{c} {got.get(c, 0)} (manifest {want.get(c, 0)})"
                         for c in classes if got.get(c, 0) != want.get(c, 0))
        return [Problem(MANIFEST, f"class counts of split {split!r} differ: {diff}")]
    return []


def check_build_files(build: Build, listed: set[str], classes: tuple[str, ...], res: VerifyResult) -> None:
    """Unlisted shards, ``classes.json``, ``skipped.jsonl`` and the readers' files; added to ``res``.

    Args:
        build: the build being verified.
        listed: every shard path the manifest lists.
        classes: the manifest's class names.
        res: problems and notes are added to it.
    """
    res.problems.extend(_extra_shards(build, listed, res.notes))
    doc, err = _read_json(build, CLASSES)
    if err:
        res.problems.append(Problem(CLASSES, err))
    elif not isinstance(doc, dict) or doc.get("classes") != list(classes):
        res.problems.append(Problem(CLASSES, f"classes differ from manifest.json's {list(classes)}"))
    res.problems.extend(_check_skipped(build, build.manifest.skipped))
    reader_problems, reader_notes = check_reader_files(build)  # README.md, wids indexes
    res.problems.extend(Problem(rel, why) for rel, why in reader_problems)
    res.notes.extend(reader_notes)


def _read_json(build: Build, rel: str) -> tuple[Any, str | None]:
    try:
        with build.open(rel) as f:
            return json.loads(f.read()), None
    except FileNotFoundError:
        return None, "missing"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"does not parse as JSON ({e})"
    except OSError as e:
        return None, f"cannot read ({e})"


def _check_dataset_json(build: Build, split: str, results: list[ShardResult], ext: str,
                        expected_samples: int) -> list[Problem]:
    rel = f"{split}/{DATASET_JSON}"
    try:
        have = [(f"{k}.{ext}", c) for k, c in build.labels(split)]
    except FileNotFoundError:
        return [Problem(rel, "missing")]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return [Problem(rel, f"does not parse as JSON ({e})")]
    except ValueError:
        return [Problem(rel, "not of the form {\"labels\": [[\"<key>.png\", class_index], ...]}")]
    except OSError as e:
        return [Problem(rel, f"cannot read ({e})")]
    problems: list[Problem] = []
    complete = all(r.complete for r in results)
    want = [(f"{k}.{ext}", c) for r in results for k, c, _ in r.samples]
    if complete and have == want:
        return []
    listed: dict[str, int] = {}
    for name, idx in have:
        if name in listed:
            problems.append(Problem(rel, f"lists {name} twice"))
        listed[name] = idx
    wanted = dict(want)
    for name, idx in want:
        if name not in listed:
            problems.append(Problem(rel, "sample is in the shards but not in dataset.json", name))
        elif idx != -1 and listed[name] != idx:
            problems.append(Problem(rel, f"label {listed[name]}, the shard says {idx}", name))
    if complete:
        for name, _ in have:
            if name not in wanted:
                problems.append(Problem(rel, "listed but not in any shard of the split", name))
        if not problems:
            i = next((i for i, (a, b) in enumerate(zip(have, want)) if a[0] != b[0]), None)
            if i is not None:
                problems.append(Problem(rel, f"not in shard order: entry {i + 1} is {have[i][0]}, "
                                             f"the shards have {want[i][0]}"))
    elif len(have) != expected_samples:
        problems.append(Problem(rel, f"lists {len(have)} samples, manifest says {expected_samples}"))
    return problems


def _extra_shards(build: Build, listed: set[str], notes: list[str]) -> list[Problem]:
    """Every ``*.tar`` one level below the build root that the manifest does not list."""
    problems = []
    base = build.path.rstrip("/")
    protocol = build.fs.protocol if isinstance(build.fs.protocol, str) else build.fs.protocol[0]
    if protocol in ("http", "https"):
        notes.append("unlisted shards not looked for: http(s) cannot list folders")
        return []
    try:
        found = build.fs.glob(base + "/*/*.tar")
    except Exception as e:  # any listing failure of any filesystem
        return [Problem(".", f"cannot list the build's folders ({type(e).__name__}: {e})")]
    for p in sorted(found):
        rel = str(p)[len(base) + 1:] if str(p).startswith(base + "/") else str(p)
        if rel not in listed:
            problems.append(Problem(rel, "shard not listed in manifest.json (extra or stray file)"))
    return problems


def _check_skipped(build: Build, skipped: Any) -> list[Problem]:
    if not isinstance(skipped, int) or isinstance(skipped, bool):
        return []
    try:
        with build.open(SKIPPED) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except FileNotFoundError:
        return [Problem(SKIPPED, "missing")] if skipped else []
    except OSError as e:
        return [Problem(SKIPPED, f"cannot read ({e})")]
    if len(lines) != skipped:
        return [Problem(SKIPPED, f"lists {len(lines)} files, manifest says {skipped} were skipped")]
    return []
