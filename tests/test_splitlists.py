"""``--split_lists`` applied without per-image Python objects gives what the line-by-line
rules give: the same items, skips, notes and error messages, on random indexes and lists
(shared base names, path entries, repeats, entries not in the index, odd line breaks,
undecodable and missing files), with small read chunks and batches so that lines and
batches straddle them, and with a hash that collides often (a hit must be checked against
the string, never taken on the hash alone).

The reference below is the first implementation (sets and dicts of every path), kept
here as the rules' executable statement.
"""

from __future__ import annotations

import posixpath
import random
from dataclasses import replace

import pytest

from shardgen.sources import splitlists
from shardgen.sources.columns import ItemTable
from shardgen.errors import UsageError
from shardgen.sources.items import Item, Skip


def _ref_read(path: str) -> list[tuple[int, str]]:
    return splitlists.read_list(path)


def _ref_apply(items: list[Item], lists):
    by_path = {it.relpath for it in items}
    by_name: dict[str, list[str]] = {}
    for it in items:
        by_name.setdefault(posixpath.basename(it.relpath), []).append(it.relpath)
    split_of: dict[str, str] = {}
    first: dict[str, str] = {}
    unknown = 0
    for split, path in lists:
        for n, entry in _ref_read(path):
            where = f"--split_lists {path}: line {n}"
            if "/" in entry:
                rel = entry if entry in by_path else None
            else:
                found = by_name.get(entry, [])
                if len(found) > 1:
                    raise UsageError(f"{where}: {entry} is ambiguous: the index has {found[0]} and {found[1]}")
                rel = found[0] if found else None
            ident = rel if rel is not None else "?" + entry
            if ident in first:
                raise UsageError(f"{where}: {entry} is listed twice (also {first[ident]})")
            first[ident] = f"{path} line {n}"
            if rel is None:
                unknown += 1
            else:
                split_of[rel] = split
    out = [replace(it, split=split_of[it.relpath]) for it in items if it.relpath in split_of]
    skips = [Skip(it.relpath, splitlists.NOT_LISTED) for it in items if it.relpath not in split_of]
    notes = [f"--split_lists: {unknown} listed file(s) are not in the index: ignored"] if unknown else []
    if skips:
        notes.append(f"--split_lists: {len(skips)} image(s) of the index are in no list: skipped "
                     "(see skipped.jsonl)")
    spans: dict[str, set[str]] = {}
    for it in out:
        if it.group is not None:
            spans.setdefault(it.group, set()).add(it.split or "")
    crossing = sorted(g for g, s in spans.items() if len(s) > 1)
    if crossing:
        notes.append(f"--split_lists: {len(crossing)} group(s) are in more than one split as the lists give "
                     f"them (e.g. {crossing[0]!r}): the same patient in two splits leaks between them")
    return out, skips, notes


NAMES = ["a.png", "b.png", "c.png", "0001_000.png", "é.png", "x y.png", "d.png", "e.png"]
DIRS = ["", "img1/", "img2/images/", "img3/"]
ERRORS = ["is listed twice", "is ambiguous", "not UTF-8 text", "cannot open"]
NOTES = ["are not in the index", "are in no list", "are in more than one split"]
BREAKS = ["\n", "\n", "\n", "\r\n", "\r", "\x85", "\u2028", "\x0c"]


def _case(rng: random.Random, tmp_path, k: int):
    """Random sorted items, and list files naming some of them (and other things)."""
    names = rng.sample(NAMES, rng.randint(1, len(NAMES)))
    paths = sorted({d + n for d in DIRS for n in names if rng.random() < 0.4} | {names[0]})
    shared = rng.random() < 0.15  # else: every base name once, so the lists rarely stop at an ambiguity
    if not shared:
        seen: set[str] = set()
        paths = [p for p in paths if not (posixpath.basename(p) in seen or seen.add(posixpath.basename(p)))]
    items = [Item(p, rng.choice(["A", "B"]), None, rng.choice([None, "p1", "p2", "p3", "p4", "p5"])) for p in paths]
    lists = []
    n_lists = rng.randint(1, 3)
    where = {p: rng.randrange(n_lists + 1) for p in paths}  # n_lists: in no list
    for j in range(n_lists):
        pool = [(p if rng.random() < 0.3 else posixpath.basename(p)) for p in paths if where[p] == j]
        pool += rng.sample(["zz.png", "img9/zz.png", "q.png"], rng.randint(0, 2))
        if rng.random() < 0.1 and paths:
            pool.append(posixpath.basename(rng.choice(paths)))  # maybe listed twice
        rng.shuffle(pool)
        text = ""
        for entry in pool:
            lead = rng.choice(["", "", " ", "./", "/"])
            text += lead + (entry.replace("/", "\\") if rng.random() < 0.1 else entry) + rng.choice(BREAKS)
            if rng.random() < 0.2:
                text += rng.choice(["", "  ", "\t"]) + rng.choice(BREAKS)  # a blank line
        f = tmp_path / f"case{k}-list{j}.txt"
        raw = (b"\xef\xbb\xbf" if rng.random() < 0.2 else b"") + text.encode()
        if rng.random() < 0.05:
            raw += b"\xff\xfe bad\n"
        f.write_bytes(raw)
        lists.append((f"s{j}", str(f) if rng.random() > 0.03 else str(tmp_path / "missing.txt")))
    return items, lists


def _outcome(fn):
    try:
        out, skips, notes = fn()
    except UsageError as e:
        return "error", str(e)
    return list(out), skips, notes


@pytest.mark.parametrize("collide", [False, True])
def test_same_as_line_by_line_rules(tmp_path, monkeypatch, collide):
    monkeypatch.setattr(splitlists, "_CHUNK", 5)
    monkeypatch.setattr(splitlists, "_BATCH", 3)
    if collide:
        monkeypatch.setattr(splitlists, "_hash", lambda s: len(s) % 3)
    rng = random.Random(12)
    kinds = set()
    for k in range(400):
        items, lists = _case(rng, tmp_path, k)
        want = _outcome(lambda: _ref_apply(items, lists))
        got = _outcome(lambda: splitlists.apply_split_lists(ItemTable.of(items), lists))
        assert got == want, (k, lists)
        kinds.add(next((w for w in ERRORS if w in want[1]), "?") if want[0] == "error" else "ok")
        kinds.update(w for w in NOTES if want[0] != "error" and any(w in n for n in want[2]))
    assert kinds == {"ok", *ERRORS, *NOTES}


def test_split_names_numbered_by_first_use(tmp_path):
    """All images listed: the table keeps every row and its splits numbered as the items
    use them (here the second list's split first), as a table made from the items is."""
    items = [Item("a.png", "A"), Item("b.png", "B")]
    (tmp_path / "tr.txt").write_text("b.png\n")
    (tmp_path / "te.txt").write_text("a.png\n")
    out, skips, notes = splitlists.apply_split_lists(
        ItemTable.of(items), [("train", str(tmp_path / "tr.txt")), ("test", str(tmp_path / "te.txt"))])
    assert (out.split_names, out.split_codes().tolist(), skips, notes) == (["test", "train"], [0, 1], [], [])
    assert list(out) == [Item("a.png", "A", "test"), Item("b.png", "B", "train")]


@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])
def test_streamed_lines_are_read_list_lines(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(splitlists, "_CHUNK", chunk)
    f = tmp_path / "l.txt"
    for text in ["", "\n", "a", "a\r\nb\rc\n\nd", "\ufeffa\u2028b\x85c\x1cd\x0be\x0cf\r", " x \r\n\r\n y\\z.png",
                 "a\r", "\r\n\r\n", "./q/../r.png\n/abs.png"]:
        f.write_bytes(text.encode())
        assert list(splitlists.iter_list(str(f))) == splitlists.read_list(str(f)), repr(text)


@pytest.mark.parametrize("chunk", [4, 1 << 20])
def test_an_undecodable_list_wins_over_its_own_lines(tmp_path, monkeypatch, chunk):
    """A list is read whole before its lines count: a repeat or an ambiguous name on a line
    before its undecodable bytes is not the error; the bytes are (and a repeat in an
    earlier list still comes first)."""
    monkeypatch.setattr(splitlists, "_CHUNK", chunk)
    monkeypatch.setattr(splitlists, "_BATCH", 1)
    items = [Item("a.png", "A"), Item("d1/b.png", "B"), Item("d2/b.png", "B")]
    (tmp_path / "one.txt").write_text("a.png\n")
    (tmp_path / "two.txt").write_bytes(b"a.png\nb.png\n" + b"\n" * 20000 + b"\xff\n")  # past the reader's buffer
    (tmp_path / "three.txt").write_bytes(b"a.png\na.png\n")
    for names in (["one", "two"], ["three", "two"]):
        lists = [(f"s{k}", str(tmp_path / f"{n}.txt")) for k, n in enumerate(names)]
        want = _outcome(lambda: _ref_apply(items, lists))
        assert _outcome(lambda: splitlists.apply_split_lists(ItemTable.of(items), lists)) == want
        assert ("not UTF-8 text" if names[0] == "one" else "three.txt: line 2: a.png is listed twice") in want[1]
