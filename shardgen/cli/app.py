"""The thin python-fire layer: parse and validate arguments, call the library, print.

Fire turns values into Python literals (``001`` -> 1, ``a,b`` -> a tuple, ``true`` ->
True); every method converts and checks its arguments here, at the boundary, so
library functions get clean types. Errors from the library (:class:`ShardgenError`)
become one line on stderr and the error's exit code (2 for usage errors); no traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable

from ..errors import BuildFailed, ShardgenError, UsageError
from ..redact import safe, safe_json
from .values import as_bool, as_float, as_int, as_list, as_str

__all__ = ["CLI", "as_list", "as_bool", "as_int", "as_str"]


def _guard(name: str) -> Callable:
    """Turn ShardgenError into ``shardgen NAME: error: ...`` and SystemExit(code)."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ShardgenError as e:
                _say(f"shardgen {name}: error: {e}", err=True)
                raise SystemExit(e.exit_code) from None
            except KeyboardInterrupt:
                _say(f"shardgen {name}: interrupted", err=True)
                raise SystemExit(130) from None

        return wrapper

    return deco


def _say(text: str, err: bool = False, as_json: bool = False) -> None:
    """Print ``text`` (stdout, or stderr with ``err``): every line the CLI prints goes through
    here, so secrets in URLs are redacted and terminal controls from a build are escaped
    (``as_json``: ``text`` is JSON, whose strings get ``\\uXXXX`` escapes instead, so it stays JSON)."""
    print(safe_json(text) if as_json else safe(text), file=sys.stderr if err else sys.stdout)


def _cluster(scheduler: Any, workers: Any):
    """``--scheduler`` as a :class:`~shardgen.engines.dask.Cluster` (None without it); its messages go to stderr."""
    if scheduler is None:
        return None
    if workers is not None:
        raise UsageError("--workers is for the local build; with --scheduler, the cluster's workers run the "
                         "tasks (local:N sets their number)")
    from ..engines.dask import parse_scheduler
    from ..progress import note

    return parse_scheduler(as_str(scheduler, "scheduler"), log=note)


def _storage(endpoint_url: Any, storage_options: Any) -> dict[str, Any]:
    """``--endpoint_url`` and ``--storage_options`` of a build, checked."""
    from ..storage import parse_storage_options

    opts = storage_options
    if opts is not None and not isinstance(opts, dict):
        opts = parse_storage_options(as_str(opts, "storage_options"))
    return {"endpoint_url": None if endpoint_url is None else as_str(endpoint_url, "endpoint_url"),
            "storage_options": opts}


class CLI:
    """shardgen: labelled images -> deterministic WebDataset shards, and tools for them.

    Commands: build, verify, diff, info, preview, stylegan, export, upload. Run ``shardgen COMMAND --help``.
    """

    @_guard("build")
    def build(self, src, out, size=256, splits=None, seed=0, shard_size=1000, workers=None,
              classes=None, fit="pad", format="png", strict=False, index=None, group=None,
              max_pixels=None, overwrite=False, progress=True, dicom_window="auto", jpeg_draft=True, columns=None,
              label_sep=None, no_finding=None, split_lists=None, rehash=False, scheduler=None, endpoint_url=None,
              storage_options=None):
        """Build shards from a folder of labelled images.

        Args:
            src: source folder (Kaggle ``<class>/images/*``, ImageFolder ``<class>/*``, or
                already split ``<split>/<class>/*``).
            out: output folder (created; may hold an interrupted build of the same config).
            size: output side in pixels (default 256).
            splits: ratios like ``train=0.8,test=0.2`` (default) summing to 1.
            seed: seed of the split and shuffle (default 0).
            shard_size: samples per shard at most (default 1000).
            workers: processes (default: all cores).
            classes: class order, e.g. ``COVID,Normal`` (default: sorted names).
            fit: ``pad`` (default), ``crop`` or ``stretch`` for non-square images.
            format: image format inside shards (``png``).
            strict: exit non-zero if any file was skipped (the report is still written).
            index: CSV with columns ``path,label[,group][,split]`` instead of scanning.
            group: regex; files whose paths give the same match (or first group) share a split.
            max_pixels: skip larger images as decompression bombs (default 89,478,485).
            overwrite: replace an existing build made with a different config.
            progress: show a progress bar on stderr (default true).
            dicom_window: ``auto`` (default: a DICOM image's first VOI LUT or window, else its
                full range) or ``none`` (always the full range).
            jpeg_draft: decode large JPEGs at libjpeg's DCT scale before the resize (default true);
                false: the exact full decode.
            columns: the index's columns per role, e.g. ``path=Image Index,label=Finding Labels,group=Patient ID``
                (default: columns named path, label, group, split).
            label_sep: separator of several labels in one label cell (``|``): a multi-label build.
            no_finding: the label meaning no positive class (``No Finding``): an all-zero target.
            split_lists: official split files, e.g. ``train=train_val_list.txt,test=test_list.txt``.
            rehash: when resuming, read every already converted source again to check its
                bytes, instead of trusting an unchanged size, mtime, ctime and inode (default false).
            scheduler: run the work as Dask tasks: a scheduler ``tcp://host:8786``, or
                ``local:N`` for a local cluster of N processes (same output bytes).
            endpoint_url: S3 endpoint when SRC or OUT is an ``s3://`` URL (beats the environment).
            storage_options: fsspec options as JSON for a SRC or OUT URL, e.g. ``'{"profile": "lab"}'``.
        """
        from ..build.run import BuildConfig
        from ..build.run import build as run_build
        from ..report import format_summary

        strict = as_bool(strict, "strict")  # checked before the build, like every other flag
        cfg = BuildConfig(
            src=as_str(src, "src"),
            out=as_str(out, "out"),
            size=as_int(size, "size"),
            splits=None if splits is None else as_str(splits, "splits"),
            seed=as_int(seed, "seed"),
            shard_size=as_int(shard_size, "shard_size"),
            workers=None if workers is None else as_int(workers, "workers"),
            classes=as_list(classes, "classes"),
            fit=as_str(fit, "fit"),
            format=as_str(format, "format"),
            index=None if index is None else as_str(index, "index"),
            group=None if group is None else as_str(group, "group"),
            max_pixels=None if max_pixels is None else as_int(max_pixels, "max_pixels"),
            dicom_window=as_str(dicom_window, "dicom_window"),
            jpeg_draft=as_bool(jpeg_draft, "jpeg_draft"),
            columns=None if columns is None else as_str(columns, "columns"),
            label_sep=None if label_sep is None else as_str(label_sep, "label_sep"),
            no_finding=None if no_finding is None else as_str(no_finding, "no_finding"),
            split_lists=None if split_lists is None else as_str(split_lists, "split_lists"),
        )
        result = run_build(cfg, overwrite=as_bool(overwrite, "overwrite"),
                           progress=as_bool(progress, "progress"), rehash=as_bool(rehash, "rehash"),
                           cluster=_cluster(scheduler, workers), strict=strict,
                           **_storage(endpoint_url, storage_options))
        _say(format_summary(result))
        for note in result.notes:
            _say(f"note: {note}", err=True)
        if strict:
            problems = [f"{len(result.skipped)} file(s) skipped; see {cfg.out}/skipped.jsonl"] if result.skipped else []
            problems += [f"split {sp} is empty" for sp in result.empty_splits]
            if problems:
                raise BuildFailed(f"--strict: {'; '.join(problems)}")

    @_guard("verify")
    def verify(self, source, decode=True, workers=None, progress=True):
        """Check a build end to end; exit 0 with one OK line, else 1 and every problem.

        Recomputes each shard's xxh64, size and sample count; checks every sample's members,
        label, .json class and image (decoded unless --decode false); keys unique across the
        build; no image in two splits; each split's dataset.json.

        Args:
            source: build folder, its manifest.json, or a URL (s3://, http(s)://, ...).
            decode: decode every image (default true); false reads PNG headers and checksums only.
            workers: processes decoding images (default: all usable cores).
            progress: show a progress bar on stderr (default true).
        """
        from ..commands.verify import format_result
        from ..commands.verify import verify as run_verify

        result = run_verify(as_str(source, "source"), decode=as_bool(decode, "decode"),
                            workers=None if workers is None else as_int(workers, "workers", 1),
                            progress=as_bool(progress, "progress"))
        _say(format_result(result))
        if not result.ok:
            raise SystemExit(1)

    @_guard("diff")
    def diff(self, a, b, decode=False, progress=True):
        """Are two builds the same dataset? Same keys, splits, class names and decoded pixels.

        Exit 0 with one line when they are; 1 with the counts of added, removed, relabelled,
        re-split and pixel-changed samples (and the first keys of each) when not; 2 when a
        build cannot be read. PNG bytes are not compared. Shards are read only where the
        manifests' pixel digests do not already settle it.

        Args:
            a: build folder, its manifest.json, or a URL (s3://, http(s)://, ...).
            b: the other build, likewise.
            decode: decode every image present in both builds instead of trusting the
                recorded pixel digests (default false).
            progress: show a progress bar on stderr while reading shards (default true).
        """
        from ..commands.diff import diff_builds, format_diff

        result = diff_builds(as_str(a, "a"), as_str(b, "b"), decode=as_bool(decode, "decode"),
                             progress=as_bool(progress, "progress"))
        _say(format_diff(result))
        if not result.same:
            raise SystemExit(1)

    @_guard("info")
    def info(self, source, json=False, timeout=30.0):
        """Show a build: samples per split x class, shards, bytes, image format, skips, config.

        Args:
            source: build folder, its manifest.json, or a URL.
            json: print the same as JSON.
            timeout: connect and read timeout of each remote request, in seconds (default 30).
        """
        import json as _json

        from ..commands.info import build_info, format_info
        from ..storage import check_timeout

        secs = check_timeout(as_float(timeout, "timeout"), "--timeout")
        data = build_info(as_str(source, "source"), timeout=secs)
        if as_bool(json, "json"):
            _say(_json.dumps(data, indent=1, ensure_ascii=False), as_json=True)
        else:
            _say(format_info(data))

    @_guard("preview")
    def preview(self, source, split="train", per_class=8, out="preview.png", thumb=None, overwrite=False):
        """Write a contact sheet PNG: one labelled row per class, images from the split's shards.

        Args:
            source: build folder, its manifest.json, or a URL.
            split: split to draw from (default train).
            per_class: images per class (default 8).
            out: PNG to write (default preview.png).
            thumb: tile side in pixels (default: image size, at most 128).
            overwrite: replace an existing --out file (default: refuse).
        """
        from ..commands.preview import make_preview

        r = make_preview(as_str(source, "source"), split=as_str(split, "split"),
                         per_class=as_int(per_class, "per_class", 1), out=as_str(out, "out"),
                         thumb=None if thumb is None else as_int(thumb, "thumb", 1),
                         overwrite=as_bool(overwrite, "overwrite"))
        short = [f"{c} {n}" for c, n in zip(r.classes, r.shown) if n < r.per_class]
        note = f"; fewer than {r.per_class} in split: {', '.join(short)}" if short else ""
        _say(f"wrote {r.out} ({r.width}x{r.height}: {len(r.classes)} classes x {r.per_class} images "
              f"of split {r.split}, {r.thumb}px tiles{note})")

    @_guard("stylegan")
    def stylegan(self, source, split="train", dest=None, uncompressed=False, overwrite=False,
                 progress=True):
        """Export for StyleGAN2-ADA: dataset_tool.py's layout with labels, as a zip or folder.

        ``train.py --data=DEST --cond=1`` reads it unchanged: 00000/img00000000.png, ...
        (1-channel grayscale, square power-of-two) and dataset.json with every class index.

        Args:
            source: build folder, its manifest.json, or a URL.
            split: split to export, or ``all`` for every split (default train).
            dest: ``NAME.zip`` (written atomically) or a folder path ending in ``/``.
            uncompressed: re-encode PNGs uncompressed as dataset_tool.py does (default: copy).
            overwrite: replace an existing zip.
            progress: show a progress bar on stderr (default true).
        """
        from ..commands.stylegan import export_stylegan
        from ..report import human_bytes

        if dest is None:
            raise UsageError("--dest is required: NAME.zip or a folder ending in /")
        r = export_stylegan(as_str(source, "source"), split=as_str(split, "split"), dest=as_str(dest, "dest"),
                            uncompressed=as_bool(uncompressed, "uncompressed"),
                            overwrite=as_bool(overwrite, "overwrite"), progress=as_bool(progress, "progress"))
        counts = ", ".join(f"{c} {n:,}" for c, n in r.class_counts.items())
        _say(f"wrote {r.dest} ({r.kind}, {human_bytes(r.bytes)}): {r.images:,} images {r.size}x{r.size} L "
              f"from {', '.join(r.splits)}; labels: {counts}")
        if r.label_dim != r.classes:
            _say(f"note: StyleGAN2-ADA will use {r.label_dim} label dimensions (highest label + 1), "
                  f"not {r.classes}: the last class(es) have no images here", err=True)

    @_guard("export")
    def export(self, source, dest=None, layout="imagefolder", split="all", overwrite=False, progress=True):
        """Export a build as class folders: DEST/<split>/<class>/<key>.png (torchvision ImageFolder, timm, fastai).

        ``ImageFolder(DEST/train)`` reads it unchanged; it numbers classes in sorted name
        order (a note says when that differs from the build's). Empty class folders are left out.

        Args:
            source: build folder, its manifest.json, or a URL.
            dest: folder to write (absent or empty; filled under a temporary name, then renamed).
            layout: ``imagefolder`` (default; the only layout).
            split: split to export, or ``all`` for every split (default all).
            overwrite: replace a non-empty DEST.
            progress: show a progress bar on stderr (default true).
        """
        from ..commands.export import export_folders
        from ..report import human_bytes

        if dest is None:
            raise UsageError("--dest is required: the folder to write")
        r = export_folders(as_str(source, "source"), as_str(dest, "dest"), layout=as_str(layout, "layout"),
                           split=as_str(split, "split"), overwrite=as_bool(overwrite, "overwrite"),
                           progress=as_bool(progress, "progress"))
        per = ", ".join(f"{sp} {sum(c.values()):,}" for sp, c in r.counts.items())
        _say(f"wrote {r.dest} ({r.layout}, {human_bytes(r.bytes)}): {r.images:,} images ({per}) "
              f"in {len(next(iter(r.counts.values())))} classes")
        for note in r.notes:
            _say(f"note: {note}", err=True)

    @_guard("upload")
    def upload(self, out, dest, endpoint_url=None, workers=8, storage_options=None, overwrite=False,
               progress=True, retries=5):
        """Upload a finished build to object storage (``s3://bucket/prefix``) or any fsspec URL/folder.

        Local shards are checked against the manifest first; each shard is read back after
        upload; shards already there with the right size and xxh64 are skipped (a re-run
        resumes); ``manifest.json`` goes last.

        Args:
            out: the local build folder.
            dest: destination URL (``s3://bucket/prefix``, ``file:///path``, a folder, ...).
            endpoint_url: S3 endpoint, e.g. ``http://127.0.0.1:8333``; beats ``--storage_options`` and the
                environment (default: ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL``, or AWS).
            workers: shards uploaded at once (default 8).
            storage_options: fsspec options as JSON, e.g. ``'{"profile": "lab"}'``.
            overwrite: replace a different build already at ``dest``.
            progress: show progress bars on stderr (default true).
            retries: attempts after a transient error, with exponential backoff (default 5).
        """
        from ..commands.upload import UploadInterrupted, format_upload
        from ..commands.upload import upload as run_upload
        from ..storage import parse_storage_options

        opts = storage_options
        if opts is not None and not isinstance(opts, dict):
            opts = parse_storage_options(as_str(opts, "storage_options"))
        try:
            result = run_upload(
                as_str(out, "out"), as_str(dest, "dest"),
                endpoint_url=None if endpoint_url is None else as_str(endpoint_url, "endpoint_url"),
                workers=as_int(workers, "workers", 1),
                storage_options=opts,
                overwrite=as_bool(overwrite, "overwrite"),
                progress=as_bool(progress, "progress"),
                retries=as_int(retries, "retries", 0),
            )
        except KeyboardInterrupt:
            raise UploadInterrupted("interrupted; re-run the same command to resume "
                                    "(shards already there are skipped)") from None
        _say(format_upload(result))

