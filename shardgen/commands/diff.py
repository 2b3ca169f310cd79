"""``shardgen diff A B``: are two builds the same dataset?

Two builds are the same dataset when they hold the same sample keys, each in the same
split, with the same class name and the same pixels. Samples are matched by key. Labels
are compared by class *name*: two builds that list the same classes in another order
(so the indices differ) but give every key the same class name are the same dataset, and
the different order is reported in a note. Not compared: PNG bytes (another encoder or
level gives other bytes for the same pixels), the ``.json`` metadata other than the class
(e.g. ``source`` paths), shard layout and sample order, the build config.

What is read, cheapest first:

1. Both manifests and each split's ``dataset.json`` (keys and labels in shard order).
   A split whose ``dataset.json`` is missing or disagrees with the manifest's counts is
   read from its shards instead.
2. A shard of A whose keys (in order) and ``pixels_xxh64`` equal those of a shard of B
   settles its samples' pixels without reading either shard: identical builds are
   compared without reading a single shard.
3. For the remaining samples present in both builds, the shards holding them are read in
   both builds; each sample's pixel digest is the ``.json``'s ``pixels``, and the PNG is
   decoded only when a build lacks it (builds made before pixel digests existed).

``diff`` trusts the recorded digests (``shardgen verify`` checks them against the pixels);
``decode=True`` ignores them and decodes every image present in both builds. Exit codes
follow ``diff(1)``: 0 same, 1 different, 2 trouble (a build that cannot be read).
"""

from __future__ import annotations

import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import AccessDenied, ShardgenError, TransportError
from ..format import CLS_EXT, DATASET_JSON, LabelError, ShardEntry, pixels_digest, read_target
from ..progress import bar as progress_bar
from ..storage import Build, open_build
from .archive import shard_samples

__all__ = ["Change", "DiffResult", "DiffError", "diff_builds", "format_diff", "SHOWN"]

#: keys listed per kind of change in the report
SHOWN = 5
_HEX16_RE = re.compile(r"^[0-9a-f]{16}$")


class DiffError(ShardgenError):
    """A build could not be read or is inconsistent: exit code 2, as ``diff(1)`` on trouble."""

    exit_code = 2


@dataclass(frozen=True)
class Change:
    """One sample that differs: its key and its split or class in A and in B (None: absent)."""

    key: str
    a: str | None = None
    b: str | None = None


@dataclass
class DiffResult:
    """What :func:`diff_builds` found.

    Attributes:
        a, b: the builds as given.
        samples_a, samples_b: samples per split.
        added: keys only in B (``b`` = split); removed: keys only in A (``a`` = split).
        relabelled: class name differs (``a``/``b`` = class names).
        resplit: split differs (``a``/``b`` = split names).
        pixels_changed: decoded pixels differ (``a``/``b`` = split names).
        shards_read, shards_total: shards read, of both builds together.
        decoded: images decoded (only where a build records no pixel digest, or ``decode=True``).
        notes: differences that do not make the datasets differ (class order, shard bytes, ...).
        seconds: wall time.
    """

    a: str
    b: str
    samples_a: dict[str, int] = field(default_factory=dict)
    samples_b: dict[str, int] = field(default_factory=dict)
    added: list[Change] = field(default_factory=list)
    removed: list[Change] = field(default_factory=list)
    relabelled: list[Change] = field(default_factory=list)
    resplit: list[Change] = field(default_factory=list)
    pixels_changed: list[Change] = field(default_factory=list)
    shards_read: int = 0
    shards_total: int = 0
    decoded: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def same(self) -> bool:
        return not any(self.kinds().values())

    def kinds(self) -> dict[str, list[Change]]:
        """The changes by kind, in report order, keyed by the report's words."""
        return {"added": self.added, "removed": self.removed, "relabelled": self.relabelled,
                "re-split": self.resplit, "pixels changed": self.pixels_changed}


@dataclass
class _Shard:
    split: str
    entry: ShardEntry
    keys: list[str] | None  # from dataset.json; None: known only once read


@dataclass
class _Side:
    """One build as diff sees it: where each key is, its class name and (once known) pixels."""

    build: Build
    shards: list[_Shard] = field(default_factory=list)
    where: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # key -> (split, class, shard)
    pixels: dict[str, str] = field(default_factory=dict)
    read: set[int] = field(default_factory=set)
    decoded: int = 0
    duplicates: list[str] = field(default_factory=list)

    def add(self, key: str, split: str, cls: str, shard: int) -> None:
        if key in self.where:
            self.duplicates.append(key)
        else:
            self.where[key] = (split, cls, shard)


def _listing(build: Build, split: str) -> tuple[list[tuple[str, str]] | None, str]:
    """(key, class name) per sample of ``split`` from its dataset.json, or (None, why not)."""
    try:
        labels = build.labels(split)
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e})"
    except ValueError as e:
        return None, f"is not valid ({e})"
    classes = build.classes
    bad = next((c for _, c in labels if max(c if isinstance(c, tuple) else (c,), default=0) >= len(classes)), None)
    if bad is not None:
        return None, f"has label {bad}, the build has {len(classes)} classes"
    return [(k, _label_name(classes, c)) for k, c in labels], ""


def _label_name(classes, c) -> str:
    """A class name; a multi-label sample's class names joined with ``|`` (none: ``""``)."""
    return "|".join(classes[i] for i in c) if isinstance(c, tuple) else classes[c]


def _load(build: Build) -> tuple[_Side, list[int], list[str]]:
    """Index a build from its manifest and dataset.json files.

    Returns:
        (side, shards that must be read to learn their keys, notes).
    """
    side, must_read, notes = _Side(build), [], []
    for split, s in build.manifest.splits.items():
        entries = s.shards
        counts = [e.samples for e in entries]
        listing, why = _listing(build, split)
        if listing is not None and len(listing) != sum(counts):
            listing, why = None, f"lists {len(listing)} samples, manifest.json says {sum(counts)}"
        if listing is None:
            notes.append(f"{build.root}: {split}/{DATASET_JSON} {why}: read the split's shards instead")
        pos = 0
        for e, n in zip(entries, counts):
            i = len(side.shards)
            part = listing[pos:pos + n] if listing is not None else None
            side.shards.append(_Shard(split, e, [k for k, _ in part] if part is not None else None))
            if part is None:
                must_read.append(i)
            else:
                for k, c in part:
                    side.add(k, split, c, i)
            pos += n
    return side, must_read, notes


def _pixel_digest(png: bytes) -> str:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        im.load()
        return pixels_digest(im.tobytes())


def _row(s, classes: list[str], ext: str, decode: bool, where: str) -> tuple[tuple[str, str, str], bool]:
    """(key, class name, pixel digest) of sample ``s``, and whether its image was decoded."""
    try:
        meta = json.loads(s.parts.get("json") or b"{}")
    except ValueError:
        meta = {}
    meta = meta if isinstance(meta, dict) else {}
    cls = meta.get("class")
    if isinstance(meta.get("label_names"), list):  # a multi-label sample
        cls = "|".join(map(str, meta["label_names"]))
    elif not isinstance(cls, str):
        try:
            cls = classes[read_target(s.parts.get(CLS_EXT), len(classes))]
        except LabelError:
            cls = "?"
    pixels = meta.get("pixels")
    if not decode and isinstance(pixels, str) and _HEX16_RE.match(pixels):
        return (s.key, cls, pixels), False
    try:
        pixels = _pixel_digest(s.parts[ext])
    except Exception as e:  # PIL raises many types for broken data
        raise DiffError(f"{where}: {s.key}: image does not decode "
                        f"({str(e) or type(e).__name__}); run shardgen verify") from None
    return (s.key, cls, pixels), True


def _read_shard(side: _Side, i: int, decode: bool) -> tuple[list[tuple[str, str, str]], int]:
    """(key, class name, pixel digest) of every sample of shard ``i`` in shard order, and images decoded.

    The shard is read through :func:`shardgen.commands.archive.shard_samples`: its size and xxh64 must be
    the manifest's, and no member may declare more bytes than the shard and image size allow.

    Raises:
        DiffError: the shard is missing, unreadable, does not match the manifest, or a sample
            has no image that decodes.
    """
    build, sh = side.build, side.shards[i]
    rel = sh.entry.path
    out = []
    decoded = 0
    try:
        for s in shard_samples(build, sh.entry):
            row, dec = _row(s, build.classes, build.manifest.image.ext, decode, f"{build.root}/{rel}")
            out.append(row)
            decoded += dec
    except (DiffError, TransportError, AccessDenied):  # the storage's failure, not the shard's: exit 1 / 2
        raise
    except ShardgenError as e:  # names the shard already
        raise DiffError(f"{str(e).removesuffix('; run shardgen verify')}; run shardgen verify") from None
    if sh.keys is not None and [k for k, _, _ in out] != sh.keys:
        raise DiffError(f"{build.root}/{rel}: its keys differ from {sh.split}/{DATASET_JSON}; "
                        "run shardgen verify")
    return out, decoded


def _read(jobs: list[tuple[_Side, int]], decode: bool, progress: bool) -> None:
    """Read the shards ``jobs`` (4 at a time), filling each side's keys and pixel digests."""
    bar = progress_bar(len(jobs), "diff", "shard", progress and bool(jobs))

    def one(job: tuple[_Side, int]):
        side, i = job
        got = _read_shard(side, i, decode)
        bar.update(1)
        return job, got

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for (side, i), (got, decoded) in pool.map(one, jobs):
                side.read.add(i)
                side.decoded += decoded
                sh = side.shards[i]
                if sh.keys is None:
                    sh.keys = [k for k, _, _ in got]
                    for k, c, _ in got:
                        side.add(k, sh.split, c, i)
                for k, _, p in got:
                    side.pixels.setdefault(k, p)
    finally:
        bar.close()


def _settled(a: _Side, b: _Side) -> set[str]:
    """Keys whose pixels are equal by shard digests: same keys in order, same ``pixels_xxh64``."""
    def sig(sh: _Shard):
        d = sh.entry.pixels_xxh64
        return (tuple(sh.keys), d) if sh.keys is not None and isinstance(d, str) else None

    in_b = {sig(sh) for sh in b.shards} - {None}
    out: set[str] = set()
    for sh in a.shards:
        s = sig(sh)
        if s is not None and s in in_b:
            out.update(sh.keys)
    return out


def diff_builds(a: str, b: str, *, decode: bool = False, progress: bool = False,
                storage_options: dict[str, Any] | None = None) -> DiffResult:
    """Compare two builds sample by sample (see the module docstring).

    Args:
        a, b: build folders, their ``manifest.json``, or URLs of either (``s3://``, ``http(s)://``).
        decode: decode the images of every sample present in both builds instead of trusting
            the recorded pixel digests (default False).
        progress: show a progress bar (shards read) on stderr.
        storage_options: fsspec options for both builds.

    Raises:
        UsageError: a build cannot be opened (no manifest, not a shardgen manifest).
        DiffError: a shard or ``dataset.json`` cannot be read or contradicts its build.
    """
    t0 = time.perf_counter()
    ba, bb = open_build(a, storage_options), open_build(b, storage_options)
    res = DiffResult(a=str(a), b=str(b))
    (sa, need_a, notes_a), (sb, need_b, notes_b) = _load(ba), _load(bb)
    res.notes += notes_a + notes_b
    _read([(sa, i) for i in need_a] + [(sb, i) for i in need_b], decode, progress)
    settled = set() if decode else _settled(sa, sb)
    common = [k for k in sa.where if k in sb.where]
    jobs = sorted({(0, sa.where[k][2]) for k in common if k not in settled and k not in sa.pixels}
                  | {(1, sb.where[k][2]) for k in common if k not in settled and k not in sb.pixels})
    _read([((sa, sb)[s], i) for s, i in jobs], decode, progress)

    for k, (split, _, _) in sa.where.items():
        if k not in sb.where:
            res.removed.append(Change(k, split, None))
    for k, (split, _, _) in sb.where.items():
        if k not in sa.where:
            res.added.append(Change(k, None, split))
    for k in common:
        (sp_a, c_a, _), (sp_b, c_b, _) = sa.where[k], sb.where[k]
        if sp_a != sp_b:
            res.resplit.append(Change(k, sp_a, sp_b))
        if c_a != c_b:
            res.relabelled.append(Change(k, c_a, c_b))
        if k not in settled and sa.pixels.get(k) != sb.pixels.get(k):
            res.pixels_changed.append(Change(k, sp_a, sp_b))
    for changes in res.kinds().values():
        changes.sort(key=lambda c: c.key)

    for side, name in ((sa, "samples_a"), (sb, "samples_b")):
        setattr(res, name, {sp: sum(1 for v in side.where.values() if v[0] == sp) for sp in side.build.splits})
    res.shards_read = len(sa.read) + len(sb.read)
    res.shards_total = len(sa.shards) + len(sb.shards)
    res.decoded = sa.decoded + sb.decoded
    res.notes += _notes(sa, sb, res.same)
    res.seconds = time.perf_counter() - t0
    return res


def _notes(a: _Side, b: _Side, same: bool) -> list[str]:
    """What differs between the builds without making the datasets differ."""
    notes = []
    for side in (a, b):
        if side.duplicates:
            notes.append(f"{side.build.root}: key {side.duplicates[0]} appears more than once "
                         f"({len(side.duplicates)} repeats; the first is compared); run shardgen verify")
    ca, cb = a.build.classes, b.build.classes
    if ca != cb:
        how = "class order differs" if sorted(ca) == sorted(cb) else "class lists differ"
        notes.append(f"{how} (A: {', '.join(ca)}; B: {', '.join(cb)}): labels are compared by class name")
    sa, sb = a.build.manifest.image.size, b.build.manifest.image.size
    if sa != sb:
        notes.append(f"image size differs: A {sa}x{sa}, B {sb}x{sb}")
    if same:
        in_b = {(sh.entry.path, sh.entry.xxh64) for sh in b.shards}
        differ = sum((sh.entry.path, sh.entry.xxh64) not in in_b for sh in a.shards)
        if differ or len(a.shards) != len(b.shards):
            notes.append(f"shard bytes differ ({differ} of {len(a.shards)} shards of A have no byte-identical "
                         "twin in B), pixels identical")
    return notes


def _shown(kind: str, c: Change) -> str:
    if kind == "added":
        return f"{c.key} ({c.b})"
    if kind in ("removed", "pixels changed"):
        return f"{c.key} ({c.a})"
    return f"{c.key} ({c.a} -> {c.b})"


def format_diff(r: DiffResult) -> str:
    """The report: one ``same dataset: ...`` line (plus notes), or per kind of change its count
    and first :data:`SHOWN` keys, both builds' samples per split, the notes, and a last
    ``DIFFERENT: ...`` line with the counts."""
    read = f"{r.shards_read} of {r.shards_total} shards read" + (f", {r.decoded:,} images decoded"
                                                                  if r.decoded else "")
    notes = [f"note: {n}" for n in r.notes]
    if r.same:
        n = sum(r.samples_a.values())
        splits = ", ".join(f"{k} {v:,}" for k, v in r.samples_a.items())
        return "\n".join([f"same dataset: {n:,} samples ({splits}): keys, labels, splits and pixels identical "
                          f"[{read}, {r.seconds:.1f} s]"] + notes)
    lines = []
    for kind, changes in r.kinds().items():
        if changes:
            more = f", ... ({len(changes) - SHOWN:,} more)" if len(changes) > SHOWN else ""
            lines.append(f"{kind} {len(changes):,}: " + ", ".join(_shown(kind, c) for c in changes[:SHOWN]) + more)
    for name, root, samples in (("A", r.a, r.samples_a), ("B", r.b, r.samples_b)):
        splits = ", ".join(f"{k} {v:,}" for k, v in samples.items())
        lines.append(f"{name}: {root}: {sum(samples.values()):,} samples ({splits})")
    lines += notes
    counts = ", ".join(f"{kind} {len(ch):,}" for kind, ch in r.kinds().items())
    lines.append(f"DIFFERENT: {counts} [{read}, {r.seconds:.1f} s]")
    return "\n".join(lines)
