"""Human-readable summaries of a build (printed by the CLI)."""

from __future__ import annotations

from typing import Any

from .format import Manifest

__all__ = ["format_table", "format_summary", "human_bytes"]


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_table(rows: list[list[Any]], header: list[str]) -> str:
    """Plain aligned text table; numbers right-aligned."""
    cells = [[str(h) for h in header]] + [[f"{v:,}" if isinstance(v, int) else str(v) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, r in enumerate(cells):
        out = []
        for i, v in enumerate(r):
            numeric = n > 0 and i > 0
            out.append(v.rjust(widths[i]) if numeric else v.ljust(widths[i]))
        lines.append("  ".join(out).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def multilabel_table(manifest: Manifest) -> str:
    """Positive samples and positive rate per class (rows) x split (columns) of a multi-label
    build, then the samples without any positive, then the samples per split."""
    splits = list(manifest.splits)
    rates = manifest.report.get("positive_rates", {})
    rows = []
    for c in manifest.classes:
        vals = [manifest.splits[s].class_counts.get(c, 0) for s in splits]
        rows.append([c] + [f"{v:,} ({100 * rates.get(s, {}).get(c, 0):.1f}%)" for s, v in zip(splits, vals)]
                    + [sum(vals)])
    none = manifest.report.get("no_finding", {})
    rows.append(["no finding"] + [none.get(s, 0) for s in splits] + [sum(none.get(s, 0) for s in splits)])
    tot = [manifest.splits[s].samples for s in splits]
    rows.append(["samples"] + tot + [sum(tot)])
    return format_table(rows, ["class (positives, rate)"] + splits + ["all"])


def split_class_table(manifest: Manifest) -> str:
    """Samples per class (rows) x split (columns), with totals."""
    if manifest.multilabel:
        return multilabel_table(manifest)
    splits = list(manifest.splits)
    classes = manifest.classes
    rows = []
    for c in classes:
        vals = [manifest.splits[s].class_counts.get(c, 0) for s in splits]
        rows.append([c] + vals + [sum(vals)])
    tot = [manifest.splits[s].samples for s in splits]
    rows.append(["total"] + tot + [sum(tot)])
    return format_table(rows, ["class"] + splits + ["all"])


def format_summary(result) -> str:
    """The end-of-build report: split x class table, shards, bytes, skips, rate."""
    m = result.manifest
    rep = m.report
    shards = len(m.shards())
    nbytes = sum(sh.bytes for sh in m.shards())
    rate = result.images / result.seconds if result.seconds > 0 else 0.0
    lines = [split_class_table(m), ""]
    per_split = ", ".join(f"{k} {len(v.shards)}" for k, v in m.splits.items())
    lines.append(f"shards: {shards} ({per_split}), "
                 f"{human_bytes(nbytes)}, {m.image.size}x{m.image.size} {m.image.mode} {m.image.ext}")
    lines.append(f"skipped: {m.skipped}" + (f" (see {result.out}/skipped.jsonl)" if m.skipped else ""))
    extra = []
    if rep.get("duplicate_groups"):
        # Groups only span splits when the source came split; shardgen never splits a group itself.
        where = "kept in one split" if not rep.get("duplicates_across_splits") else "split as the source gave them"
        extra.append(f"{rep['duplicate_groups']} duplicate groups ({rep['duplicate_images']} images; "
                     f"{where}; see duplicates.jsonl)")
    if rep.get("label_conflicts"):
        extra.append(f"{rep['label_conflicts']} label conflicts (same pixels, different classes)")
    if rep.get("duplicates_across_splits"):
        extra.append(f"{rep['duplicates_across_splits']} duplicate groups span splits of the pre-split source")
    if rep.get("true_color"):
        extra.append(f"{rep['true_color']} true-colour images converted to grayscale")
    if rep.get("excluded_by_classes"):
        extra.append(f"{rep['excluded_by_classes']} images of classes not in --classes left out")
    for e in extra:
        lines.append(f"note: {e}")
    resumed = ""
    if result.reused_chunks or result.kept_shards:
        resumed = (f" (resumed: reused {result.reused_chunks}/{result.total_chunks} chunks, re-hashed "
                   f"{result.rehashed_sources} sources, kept {result.kept_shards}/{result.total_shards} shards)")
    lines.append(f"{result.images:,} images in {result.seconds:.1f} s = {rate:,.0f} images/s{resumed}")
    lines.append(f"wrote {result.out}/manifest.json")
    return "\n".join(lines)
