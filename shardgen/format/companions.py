"""Files that let other readers open a build with no conversion: a dataset card and wids indexes.

Written by every build just before ``manifest.json`` (:func:`write_reader_files`), derived
from the manifest alone (and the documented ``.json`` fields), so they are as
deterministic as the manifest (no timestamps, no paths outside OUT):

- ``OUT/README.md``: a dataset card. Its YAML front matter is what Hugging Face
  ``datasets`` reads: ``configs`` (one ``default`` config whose ``data_files`` give each
  split as ``<split>/*.tar``, so ``load_dataset(OUT)`` reads the shards with its
  ``webdataset`` builder and never the ``dataset.json`` files) and ``dataset_info``
  (features: ``png`` an Image, ``cls`` a ClassLabel with the class names, ``json`` a
  struct, ``__key__``/``__url__`` strings; each split's sample count, which ``datasets``
  checks on load). The body says what the build is and how to load it.
- ``OUT/<split>/<split>.wids.json``: a wids shard index (``wids-shard-index-v1``): each
  shard's URL relative to the index, sample count and size in bytes, so
  ``wids.ShardListDataset(path)`` gives indexed random access.

A split with no samples has no shards: it gets no wids index (wids refuses an empty shard
list) and no ``data_files`` entry. A split name that Hugging Face does not accept (only
letters, digits and ``_``) is left out of the card's config and named in its body.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from . import DATASET_CARD, Manifest, atomic_write_bytes, dump_json, wids_index_name

__all__ = ["WIDS_KIND", "hf_split_ok", "json_fields", "dataset_card", "wids_index", "check_wids_index",
           "check_reader_files", "write_reader_files"]

#: ``__kind__`` of a wids shard index, as ``widsindex`` writes it.
WIDS_KIND = "wids-shard-index-v1"
#: ``datasets.naming._split_re``: the split names Hugging Face accepts.
_HF_SPLIT_RE = re.compile(r"^\w+(\.\w+)*$")
#: The ``.json`` fields of a sample (docs/format.md), with an example value of each type.
#: ``source_raw`` is present only for non-UTF-8 file names (null elsewhere in ``datasets``).
SAMPLE_JSON = {"class": "", "source": "", "source_raw": "", "width": 0, "height": 0, "mode": "", "pixels": ""}
#: The same for a multi-label build (``labels``: class indices, ``label_names``: their names).
SAMPLE_JSON_MULTILABEL = {"labels": [0], "label_names": [""], "source": "", "source_raw": "", "width": 0,
                          "height": 0, "mode": "", "pixels": ""}
# YAML double-quoted scalars must not hold these raw (PyYAML's printable set, inverted).
_YAML_UNPRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def hf_split_ok(name: str) -> bool:
    """True when Hugging Face ``datasets`` accepts ``name`` as a split name."""
    return bool(_HF_SPLIT_RE.match(name))


def _yq(s: str) -> str:
    """``s`` as a YAML double-quoted scalar (JSON escapes, plus \\u escapes for unprintables)."""
    q = json.dumps(str(s), ensure_ascii=False)
    return _YAML_UNPRINTABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", q)


def _md(s: str) -> str:
    """``s`` safe inside a Markdown table cell."""
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def json_fields(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """``(field, datasets dtype)`` for each scalar field of a sample's ``.json``, in order.

    Strings and nulls are ``string``, integers ``int64``, floats ``float64``, booleans
    ``bool``; a list of integers or strings is ``list:int64`` / ``list:string``; other
    lists and objects are left out (``datasets`` then drops them).
    """
    out = []
    for k, v in meta.items():
        if isinstance(v, list) and v and isinstance(v[0], (int, str)) and not isinstance(v[0], bool):
            out.append((k, "list:int64" if isinstance(v[0], int) else "list:string"))
        elif isinstance(v, bool):
            out.append((k, "bool"))
        elif isinstance(v, int):
            out.append((k, "int64"))
        elif isinstance(v, float):
            out.append((k, "float64"))
        elif v is None or isinstance(v, str):
            out.append((k, "string"))
    return out


def _card_yaml(manifest: Manifest, fields: list[tuple[str, str]], splits: list[str]) -> list[str]:
    classes = manifest.classes
    y = ["---", "# Written by shardgen from manifest.json; every build rewrites this file.",
         "task_categories:", "- image-classification", "configs:", "- config_name: default", "  data_files:"]
    for sp in splits:
        y += [f"  - split: {_yq(sp)}", f"    path: {_yq(sp + '/*.tar')}"]
    y += ["dataset_info:", "  config_name: default", "  features:",
          "  - name: __key__", "    dtype: string",
          "  - name: png", "    dtype: image"]
    if manifest.multilabel:  # the multi-hot target, decoded from .npy by datasets' webdataset builder
        y += ["  - name: labels.npy", "    list: float32", f"    length: {len(classes)}"]
    else:
        y += ["  - name: cls", "    dtype:", "      class_label:", "        names:"]
        y += [f"          '{i}': {_yq(c)}" for i, c in enumerate(classes)]
    y += ["  - name: json", "    struct:"]
    for k, t in fields:
        kind = f"list: {t[5:]}" if t.startswith("list:") else f"dtype: {t}"
        y += [f"    - name: {_yq(k)}", f"      {kind}"]
    y += ["  - name: __url__", "    dtype: string", "  splits:"]
    total = 0
    for sp in splits:
        s = manifest.splits[sp]
        nbytes = sum(sh.bytes for sh in s.shards)
        total += nbytes
        y += [f"  - name: {_yq(sp)}", f"    num_bytes: {nbytes}", f"    num_examples: {s.samples}"]
    y += [f"  download_size: {total}", f"  dataset_size: {total}", "---"]
    return y


def _card_body(manifest: Manifest, left_out: list[str]) -> list[str]:
    classes = manifest.classes
    splits = manifest.splits
    size, mode, ext = manifest.image.size, manifest.image.mode, manifest.image.ext
    total = manifest.samples
    names = list(splits)
    b = ["", "# Image classification dataset (shardgen build)", "",
         f"{total:,} image{'s' * (total != 1)} in {len(classes)} class{'es' * (len(classes) != 1)}, "
         f"{size}x{size} pixels, "
         f"{'8-bit grayscale' if mode == 'L' else mode} {ext.upper()}, in WebDataset tar shards "
         f"(format `{manifest.format}`, shardgen {manifest.shardgen_version or '?'}). "
         "Every file of this folder is listed below; `manifest.json` holds each shard's size and "
         "xxh64 checksum (`shardgen verify` checks them).", "",
         "## Classes", "",
         "| index | class | " + " | ".join(_md(sp) for sp in names) + " | total |",
         "|---:|---|" + "---:|" * (len(names) + 1)]
    for i, c in enumerate(classes):
        per = [int(splits[sp].class_counts.get(c, 0)) for sp in names]
        b.append(f"| {i} | {_md(c)} | " + " | ".join(f"{n:,}" for n in per) + f" | {sum(per):,} |")
    b.append("| | **total** | " + " | ".join(f"{splits[sp].samples:,}" for sp in names)
             + f" | {total:,} |")
    if manifest.multilabel:  # class counts are positives; each image has any number of classes
        swap = {"# Image classification": "# Multi-label image classification", "| class |": "| class (positives) |",
                "| **total** |": "| **samples** |", " classes, ": " classes (multi-label), "}
        for a, z in swap.items():
            b = [line.replace(a, z, 1) for line in b]
    b += ["", "## Files", "", _members_line(manifest),
          "- `<split>/<split>.wids.json`: wids shard index (shard URLs relative to it, sample counts).",
          "- `<split>/dataset.json`: StyleGAN2-ADA labels `{\"labels\": [[\"<key>.png\", "
          + ("[0.0, 1.0, ...]" if manifest.multilabel else "index") + "], ...]}`.",
          "- `manifest.json` (written last: its presence means the build is complete), `classes.json`, "
          "`skipped.jsonl` (inputs left out, with the reason), `duplicates.jsonl`.", ""]
    if left_out:
        b += [f"Left out of the Hugging Face config: {', '.join(f'`{_md(s)}`' for s in left_out)} "
              "(no samples, or a split name Hugging Face does not accept: letters, digits and _ only).", ""]
    # The library versions (config.codecs) stay in manifest.json: the card shows the options.
    options = {k: v for k, v in manifest.config.items() if k != "codecs"}
    b += ["## Build configuration", "", "```json", json.dumps(options, indent=1, ensure_ascii=False), "```", ""]
    return b


def _members_line(manifest: Manifest) -> str:
    ext = manifest.image.ext
    if manifest.multilabel:
        return (f"- `<split>/<split>-NNNNNN.tar`: the shards. Each sample is three members sharing a key: "
                f"`<key>.{ext}` (the image), `<key>.labels.npy` (the multi-hot target: float32 [C], 1.0 for "
                "each class the image has; all 0.0 for no finding) and `<key>.json` (class indices and names, "
                "source path, and the source image's width, height and mode).")
    return (f"- `<split>/<split>-NNNNNN.tar`: the shards. Each sample is three members sharing a key: "
            f"`<key>.{ext}` (the image), `<key>.cls` (the class index as ASCII digits) and `<key>.json` "
            "(class name, source path, and the source image's width, height and mode).")


def _card_howto(manifest: Manifest, splits: list[str]) -> list[str]:
    lines = _card_howto_single(manifest, splits)
    if not manifest.multilabel:
        return lines
    ext = manifest.image.ext
    swap = {"row[\"cls\"]: class index (a ClassLabel)": "row[\"labels.npy\"]: multi-hot target (C floats)",
            "sample[\".cls\"]: class index": "sample[\".labels.npy\"]: multi-hot target",
            f"to_tuple(\"{ext}\", \"cls\")": f"to_tuple(\"{ext}\", \"labels.npy\")",
            "num_workers=4)": "num_workers=4)   # targets: float32 [B, C]"}
    out = []
    for line in lines:
        if "features[\"cls\"]" in line:
            line = "names = json.load(open(\"path/to/this/folder/classes.json\"))[\"classes\"]   # target positions"
        elif "ImageFolder" in line:
            line = "A multi-label build has no class folders (`shardgen export` refuses it)."
        for a, b in swap.items():
            line = line.replace(a, b)
        out.append(line)
    return out


def _card_howto_single(manifest: Manifest, splits: list[str]) -> list[str]:
    ext = manifest.image.ext
    sp = splits[0] if splits else next(iter(manifest.splits))
    n = len(manifest.splits[sp].shards)
    urls = f"{sp}/{sp}-{{000000..{n - 1:06d}}}.tar" if n > 1 else f"{sp}/{sp}-000000.tar"
    return [
        "## Loading", "",
        "Hugging Face `datasets` (the YAML header above is its config):", "", "```python",
        "from datasets import load_dataset",
        "ds = load_dataset(\"path/to/this/folder\")   # or the Hub repo id after uploading the folder",
        f"row = ds[{json.dumps(sp)}][0]   # row[\"{ext}\"]: PIL image, row[\"cls\"]: class index (a ClassLabel)",
        f"names = ds[{json.dumps(sp)}].features[\"cls\"].names", "```", "",
        "shardgen's loaders (PyTorch, many GPUs, object storage):", "", "```python",
        "from loaders import make_loader",
        f"loader = make_loader(\"path/to/this/folder\", split={json.dumps(sp)}, batch_size=256, num_workers=4)",
        "```", "",
        "webdataset:", "", "```python", "import webdataset as wds",
        f"ds = wds.WebDataset(\"path/to/this/folder/{urls}\", shardshuffle=False)"
        f".decode(\"pill\").to_tuple(\"{ext}\", \"cls\")   # pill: PIL images in mode L", "```", "",
        "wids (indexed random access):", "", "```python", "import wids",
        "# copies each shard into $WIDS_CACHE first; for a local folder, localname=str reads them in place",
        f"ds = wids.ShardListDataset(\"path/to/this/folder/{sp}/{wids_index_name(sp)}\")",
        f"sample = ds[0]   # sample[\".{ext}\"]: PIL image, sample[\".cls\"]: class index",
        "```", "",
        "Class folders for torchvision `ImageFolder`, timm or fastai: "
        "`shardgen export path/to/this/folder --dest DIR --layout imagefolder`.", ""]


def dataset_card(manifest: Manifest, fields: list[tuple[str, str]]) -> bytes:
    """The ``README.md`` of a build: YAML front matter for ``datasets``, then a summary.

    Args:
        manifest: the build's manifest (as written to ``manifest.json``).
        fields: the ``.json`` struct fields, from :func:`json_fields`.
    """
    usable = [sp for sp, s in manifest.splits.items() if s.shards and hf_split_ok(sp)]
    left_out = [sp for sp in manifest.splits if sp not in usable]
    lines = _card_yaml(manifest, fields, usable) + _card_body(manifest, left_out) + _card_howto(manifest, usable)
    return ("\n".join(lines).rstrip("\n") + "\n").encode("utf-8")


def wids_index(manifest: Manifest, split: str) -> dict[str, Any] | None:
    """The wids shard index of ``split`` (None when the split has no shards)."""
    shards = manifest.splits[split].shards
    if not shards:
        return None
    return {"__kind__": WIDS_KIND, "wids_version": 1, "name": split,
            "shardlist": [{"url": sh.path.rsplit("/", 1)[-1], "nsamples": sh.samples, "filesize": sh.bytes}
                          for sh in shards]}


def check_wids_index(doc: Any, manifest: Manifest, split: str) -> str | None:
    """What is wrong with a split's parsed wids index compared with the manifest (None: nothing)."""
    want = wids_index(manifest, split)
    if not isinstance(doc, dict) or doc.get("wids_version") != 1 or not isinstance(doc.get("shardlist"), list):
        return "not a wids shard index (wids_version 1 with a shardlist)"
    have = [(sh.get("url"), sh.get("nsamples")) for sh in doc["shardlist"] if isinstance(sh, dict)]
    expect = [(sh["url"], sh["nsamples"]) for sh in (want or {}).get("shardlist", [])]
    if have != expect:
        return (f"lists {len(have)} shards / {sum(n for _, n in have if isinstance(n, int)):,} samples, "
                f"manifest.json {len(expect)} / {sum(n for _, n in expect):,} (or other names)")
    return None


def write_reader_files(out: str, manifest: Manifest) -> None:
    """Write ``OUT/README.md`` and each split's wids index, atomically; remove stale indexes.

    Call it before writing ``manifest.json`` (which must stay last); the shards listed in
    ``manifest`` must be in place.
    """
    for split in manifest.splits:
        path = os.path.join(out, split, wids_index_name(split))
        index = wids_index(manifest, split)
        if index is None:
            if os.path.exists(path):
                os.unlink(path)
            continue
        atomic_write_bytes(path, dump_json(index))
    fields = json_fields(SAMPLE_JSON_MULTILABEL if manifest.multilabel else SAMPLE_JSON)
    atomic_write_bytes(os.path.join(out, DATASET_CARD), dataset_card(manifest, fields))


def check_reader_files(build) -> tuple[list[tuple[str, str]], list[str]]:
    """Check a finished build's card and wids indexes (for ``shardgen verify``).

    Args:
        build: a :class:`shardgen.storage.Build`.

    Returns:
        ``(problems, notes)``: problems as ``(relpath, reason)`` for a wids index that does
        not parse or lists other shards or counts than the manifest; notes for files that are
        absent (builds made before shardgen wrote them lack them).
    """
    problems: list[tuple[str, str]] = []
    missing: list[str] = []
    m = build.manifest
    for split, s in m.splits.items():
        if not s.shards:
            continue
        rel = f"{split}/{wids_index_name(split)}"
        try:
            with build.open(rel) as f:
                doc = json.loads(f.read())
        except FileNotFoundError:
            missing.append(rel)
            continue
        except (OSError, ValueError) as e:
            problems.append((rel, f"cannot read or parse ({e})"))
            continue
        bad = check_wids_index(doc, m, split)
        if bad:
            problems.append((rel, bad))
    try:
        if not build.fs.exists(build.join(DATASET_CARD)):
            missing.append(DATASET_CARD)
    except Exception:  # a filesystem that cannot answer (http without the file): not a failure
        pass
    notes = [f"not found: {', '.join(missing)} (wids index / dataset card; rebuild to write them)"] if missing else []
    return problems, notes
