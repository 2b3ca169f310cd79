"""``shardgen info``: what a build holds, from its manifest alone (no shard is read).

Works on any URL :func:`shardgen.storage.open_build` opens; besides the manifest it reads
``skipped.jsonl`` (a few KB) to group the skip reasons, when it is there.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from ..format import SKIPPED
from ..report import format_table, human_bytes
from ..storage import DEFAULT_TIMEOUT_S, Build, open_build

__all__ = ["build_info", "format_info"]


def _skip_reasons(build: Build) -> dict[str, int] | None:
    """Skip reasons (the part before the first ':') with counts; None when unreadable."""
    try:
        with build.open(SKIPPED) as f:
            raw = f.read()
    except (OSError, ValueError):
        return None
    reasons: Counter[str] = Counter()
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        try:
            reason = str(json.loads(line).get("reason", "?"))
        except (json.JSONDecodeError, AttributeError):
            reason = "?"
        reasons[reason.split(":", 1)[0].strip()] += 1
    return dict(reasons.most_common())


def build_info(source: str, storage_options: dict[str, Any] | None = None,
               timeout: float | None = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Everything ``info`` shows, as plain data (also printed by ``info --json``).

    ``timeout``: connect and read timeout of each remote request, in seconds (default 30).
    """
    build = open_build(source, storage_options, timeout=timeout)
    m = build.manifest
    splits = {name: {"samples": s.samples, "class_counts": {c: int(s.class_counts.get(c, 0)) for c in m.classes},
                     "shards": len(s.shards), "bytes": sum(sh.bytes for sh in s.shards)}
              for name, s in m.splits.items()}
    extra: dict[str, Any] = {}
    if m.multilabel:  # class_counts are positives; cardinality = mean positives per sample
        extra = {"task": m.task, "label_cardinality": {
            n: round(sum(s["class_counts"].values()) / s["samples"], 4) if s["samples"] else 0.0
            for n, s in splits.items()}, "no_finding": dict(m.report.get("no_finding") or {})}
    return {
        "root": build.root,
        "format": m.format,
        "shardgen_version": m.shardgen_version,
        "classes": list(m.classes),
        "image": m.image.to_json(),
        "splits": splits,
        "skipped": m.skipped,
        "skip_reasons": _skip_reasons(build) if m.skipped else {},
        "report": m.report,
        "config": m.config,
        "codecs": m.codecs.to_json() if m.codecs else None,
        **extra,
    }


def format_info(info: dict[str, Any]) -> str:
    """The human-readable report: build, image, samples per class x split, shards, bytes, config."""
    splits = info["splits"]
    names = list(splits)
    rows = []
    for c in info["classes"]:
        vals = [splits[s]["class_counts"][c] for s in names]
        rows.append([c] + vals + [sum(vals)])
    multi = info.get("task") == "multilabel"
    if multi:
        none = [int(info.get("no_finding", {}).get(s, 0)) for s in names]
        rows.append(["no finding"] + none + [sum(none)])
    tot = [splits[s]["samples"] for s in names]
    rows.append(["total"] + tot + [sum(tot)])
    sh = [splits[s]["shards"] for s in names]
    rows.append(["shards"] + sh + [sum(sh)])
    by = [splits[s]["bytes"] for s in names]
    rows.append(["bytes"] + [human_bytes(b) for b in by] + [human_bytes(sum(by))])
    img = info["image"]
    version = f", shardgen {info['shardgen_version']}" if info.get("shardgen_version") else ""
    lines = [
        f"build:   {info['root']} ({info['format']}{version})",
        f"image:   {img['size']}x{img['size']} {img['mode']} {img['ext']}",
        f"classes: {len(info['classes'])} (label = position: "
        + ", ".join(f"{i} {c}" for i, c in enumerate(info["classes"])) + ")",
        "",
        format_table(rows, ["positives" if multi else "samples"] + names + ["all"]),
        "",
    ]
    if multi:
        card = info.get("label_cardinality", {})
        lines[2] = lines[2].replace("(label = position:", "multi-label (target position:")
        lines.append("label cardinality (mean findings per sample): "
                     + ", ".join(f"{s} {card.get(s, 0):.2f}" for s in names))
    skipped = info.get("skipped")
    reasons = info.get("skip_reasons") or {}
    why = f" ({', '.join(f'{n} {r}' for r, n in reasons.items())}; see skipped.jsonl)" if reasons else ""
    lines.append(f"skipped: {skipped if skipped is not None else 'unknown'}{why}")
    rep = info.get("report") or {}
    if rep:
        keys = [("images_found", "found"), ("images_used", "used"), ("true_color", "true-colour converted"),
                ("duplicate_groups", "duplicate groups"), ("label_conflicts", "label conflicts"),
                ("duplicates_across_splits", "duplicate groups across splits")]
        parts = [f"{label} {rep[k]:,}" if isinstance(rep[k], int) else f"{label} {rep[k]}"
                 for k, label in keys if k in rep and (rep[k] or k in ("images_found", "images_used"))]
        if parts:
            lines.append("report:  " + ", ".join(parts))
    codecs = info.get("codecs")
    lines.append("codecs:  " + (", ".join(f"{k} {v}" for k, v in codecs.items()) if codecs
                                else "not recorded (built before shardgen recorded library versions)"))
    cfg = {k: v for k, v in (info.get("config") or {}).items() if k != "codecs"}
    if cfg:
        lines.append("config:")
        width = max(len(k) for k in cfg)
        for k, v in cfg.items():
            lines.append(f"  {k.ljust(width)}  {json.dumps(v, ensure_ascii=False)}")
    return "\n".join(lines)
