"""What an upload did, how it can fail, and the summary the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...errors import ShardgenError
from ...format import MANIFEST

__all__ = ["UploadResult", "UploadFailed", "UploadInterrupted", "format_upload"]


class UploadFailed(ShardgenError):
    """The upload stopped part-way (a transfer kept failing); a re-run resumes. Exit code 1."""

    exit_code = 1


class UploadInterrupted(ShardgenError):
    """Ctrl-C: stopped between shards; a re-run resumes. Exit code 130."""

    exit_code = 130


@dataclass
class UploadResult:
    """What :func:`shardgen.commands.upload.upload` did.

    Attributes:
        out: the local build folder.
        dest: the destination as shown (no credentials).
        shards: shards in the manifest.
        sent, skipped: shards uploaded now / already there with the right size and xxh64.
        bytes_sent, bytes_skipped: their sizes.
        files_written, files_unchanged: the other files (manifest included).
        stale_removed: unlisted shard objects of an earlier build that were deleted.
        retries: transfer attempts that were retried.
        replaced_manifest: a different build's manifest was deleted first (``overwrite``).
        seconds: wall time.
        sent_paths: the shards sent now, sorted.
    """

    out: str
    dest: str
    shards: int = 0
    sent: int = 0
    skipped: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0
    files_written: int = 0
    files_unchanged: int = 0
    stale_removed: int = 0
    retries: int = 0
    replaced_manifest: bool = False
    seconds: float = 0.0
    sent_paths: list[str] = field(default_factory=list)


def format_upload(r: UploadResult) -> str:
    """The summary the CLI prints."""
    from ...report import human_bytes

    lines = [f"uploaded {r.out} -> {r.dest}",
             f"shards: {r.shards} ({r.sent} sent, {r.skipped} skipped: already there with the right size and xxh64), "
             f"{human_bytes(r.bytes_sent)} sent in {r.seconds:.1f} s"
             + (f" ({human_bytes(r.bytes_sent / r.seconds)}/s)" if r.seconds > 0 and r.bytes_sent else "")]
    extra = f"files: {r.files_written} written, {r.files_unchanged} unchanged; {MANIFEST} last"
    if r.stale_removed:
        extra += f"; removed {r.stale_removed} stale shard(s) of an earlier build"
    if r.retries:
        extra += f"; {r.retries} retried operation(s)"
    lines.append(extra)
    return "\n".join(lines)
