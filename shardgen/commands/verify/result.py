"""What :func:`shardgen.commands.verify.verify` found, and the report the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...report import human_bytes

__all__ = ["Problem", "VerifyResult", "format_result"]


@dataclass(frozen=True)
class Problem:
    """One failed check: where (a shard or file relative to the build), which key, why."""

    where: str
    reason: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.key}: {self.reason}" if self.key else f"{self.where}: {self.reason}"


@dataclass
class VerifyResult:
    """What :func:`shardgen.commands.verify.verify` found.

    Attributes:
        root: the build as given.
        problems: every failed check, in manifest order (empty when the build is intact).
        splits: samples read per split.
        shards: shards read to their end.
        shards_listed: shards in the manifest.
        bytes: bytes read.
        decoded: images fully decoded (0 with ``decode=False``).
        pixel_digests: shards whose ``pixels_xxh64`` was recomputed and compared.
        image: ``"256x256 L png"``.
        codecs: the library versions the build was made with (``config.codecs``; empty when not recorded).
        seconds: wall time.
    """

    root: str
    problems: list[Problem] = field(default_factory=list)
    splits: dict[str, int] = field(default_factory=dict)
    classes: int = 0
    shards: int = 0
    shards_listed: int = 0
    bytes: int = 0
    decoded: int = 0
    pixel_digests: int = 0
    decode: bool = True
    image: str = ""
    codecs: str = ""
    seconds: float = 0.0
    #: checks that could not be made (e.g. listing folders over http), shown with the result
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def samples(self) -> int:
        return sum(self.splits.values())


def _built_with(r: VerifyResult) -> str:
    return f"; built with {r.codecs}" if r.codecs else ""


def format_result(r: VerifyResult) -> str:
    """The report: one ``OK: ...`` line, or every problem followed by ``FAILED: ...``."""
    if r.ok:
        parts = ", ".join(f"{k} {v:,}" for k, v in r.splits.items())
        what = (f"{r.decoded:,} images decoded ({r.image})" if r.decode
                else f"PNG headers and checksums read, not decoded ({r.image})")
        return (f"OK: {r.samples:,} samples ({parts}), {r.classes} classes, {r.shards} shards, "
                f"{human_bytes(r.bytes)}: xxh64, bytes and counts match manifest.json, {what}, "
                + ("pixel digests match, " if r.pixel_digests else "") + "keys unique, "
                "no image in two splits, dataset.json files match"
                + "".join(f"; note: {n}" for n in r.notes) + _built_with(r) + f" [{r.seconds:.1f} s]")
    lines = [str(p) for p in r.problems] + [f"note: {n}" for n in r.notes]
    read = (f" ({r.shards} of {r.shards_listed} shards read to the end, {r.samples:,} samples checked)"
            if r.shards_listed else "")
    lines.append(f"FAILED: {len(r.problems)} problem(s) in {r.root}{read}{_built_with(r)} [{r.seconds:.1f} s]")
    return "\n".join(lines)
