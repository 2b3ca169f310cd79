"""The client's compact per-image storage (shardgen/columns.py) and the lean build helpers
built on it: the same values as the Python objects they replace, in far fewer bytes."""

from __future__ import annotations

import random
import tracemalloc

import numpy as np

from shardgen.sources.columns import ItemTable, RecordTable, StrColumn
from shardgen.build.convert import ImageRecord
from shardgen.format import make_keys
from shardgen.sources.items import Item
from shardgen.build.split import assign_split_indices, shuffle_order


def test_str_column_round_trips_any_file_name():
    names = ["a.png", "", "Ünïcode/名前.png", "bad-\udcff-byte.png", "x" * 300]
    col = StrColumn(names)
    assert len(col) == len(names)
    assert list(col) == names
    assert [col[i] for i in range(len(names))] == names
    assert col[-1] == names[-1] and col[1:3] == names[1:3]
    assert list(col.take([4, 0])) == [names[4], names[0]]


def test_item_table_gives_back_the_items():
    items = [
        Item("COVID/images/COVID-1.png", "COVID", keypath="COVID/COVID-1.png"),
        Item("Normal/a.png", "Normal", split="train", group="p1"),
        Item("odd/x.png", "Normal", keypath="elsewhere/y.png"),  # not a cut of the relpath
        Item("m/1.png", "A|B", labels=("A", "B")),
        Item("m/2.png", "", labels=()),
    ]
    t = ItemTable.of(items)
    assert list(t) == items and t[2] == items[2] and t[-1] == items[-1]
    assert [t.key_source(i) for i in range(len(t))] == [it.keypath or it.relpath for it in items]
    assert t.label_names == ["COVID", "Normal", "A|B", ""]
    assert t.label_codes().tolist() == [0, 1, 1, 2, 3]
    assert t.group_codes().tolist() == [-1, 0, -1, -1, -1]
    assert list(t.take([3, 1])) == [items[3], items[1]]


def test_item_table_sorts_by_relpath_like_python():
    rels = ["A/x.png", "A b/x.png", "a/x.png", "B/\udcff.png", "B/z.png"]
    random.Random(1).shuffle(rels)
    t = ItemTable.of(Item(r, "c") for r in rels).sorted()
    assert list(t.relpaths) == sorted(rels)
    already = ItemTable.of(Item(r, "c") for r in sorted(rels))
    assert already.sorted() is already


def test_record_table_keeps_what_the_plan_reads():
    recs = [ImageRecord(True, None, "0123456789abcdef", 0, 10, "00000000000000ff", 299, 300, "RGB", True),
            ImageRecord(False, "cannot decode: truncated", None),
            ImageRecord(True, None, None, 10, 5, "ffffffffffffffff", 8, 8, "L", False, {"modality": "CR"})]
    t = RecordTable(5)
    t.put(2, recs)
    assert t.rows["ok"].tolist() == [False, False, True, False, True]
    assert t.pixels_hex(2) == "00000000000000ff" and t.pixels_hex(4) == "ffffffffffffffff"
    assert t.modes[t.rows["mode"][2]] == "RGB" and t.modes[t.rows["mode"][4]] == "L"
    assert (t.rows["offset"][4], t.rows["length"][4], t.rows["width"][2], t.rows["height"][2]) == (10, 5, 299, 300)
    assert t.reasons == {3: "cannot decode: truncated"} and t.dicom == {4: {"modality": "CR"}}
    assert t.rows["true_color"].tolist() == [False, False, True, False, False]


def _kaggle_items(n: int) -> list[Item]:
    classes = ("COVID", "Lung_Opacity", "Normal", "Viral Pneumonia")
    return [Item(f"{c}/images/{c}-{i}.png", c, keypath=f"{c}/{c}-{i}.png")
            for i in range(n) for c in classes[i % 4:i % 4 + 1]]


def test_item_table_is_compact():
    """The point of the columns: well under the 300 bytes per image issue 12 allows the
    whole client (Python objects took about 600 for an Item and its strings)."""
    n = 20_000
    items = _kaggle_items(n)
    tracemalloc.start()
    t = ItemTable.of(items)
    size, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(t) == n and t[n - 1] == items[-1]
    assert size / n < 80, f"{size / n:.0f} bytes per item"


def test_keys_made_into_a_column_equal_the_list_rule():
    rng = random.Random(3)
    kp = [rng.choice(["A", "a", "x y", "x_y", "日本", "long" * 20]) + f"{rng.randint(0, 5)}.png" for _ in range(400)]
    paths = [f"p{i}/{k}" for i, k in enumerate(kp)]
    as_list = make_keys(kp, paths)
    as_col = make_keys(kp, paths, StrColumn)
    assert isinstance(as_col, StrColumn) and list(as_col) == as_list
    assert len({k.lower() for k in as_list}) == len(as_list)


def test_split_assignment_does_not_depend_on_input_order_with_groups():
    rng = random.Random(5)
    rel = [f"c{rng.randint(0, 2)}/f{i}.png" for i in range(500)]
    lab = [int(r[1]) for r in rel]
    together = [rng.sample(range(500), 4) for _ in range(20)]
    ratios = [("train", 0.7), ("val", 0.2), ("test", 0.1)]
    out = assign_splits(rel, lab, together, ratios, seed=9)
    perm = list(range(500))
    rng.shuffle(perm)
    inv = {p: i for i, p in enumerate(perm)}
    again = assign_splits([rel[p] for p in perm], [lab[p] for p in perm],
                          [[inv[i] for i in g] for g in together], ratios, seed=9)
    assert [again[inv[i]] for i in range(500)] == out
    for g in together:
        assert len({out[i] for i in g}) == 1
    order = shuffle_order(rel, 4, "train")
    assert isinstance(order, np.ndarray) and sorted(order.tolist()) == list(range(500))
    assert [rel[i] for i in order] == [rel[perm[i]] for i in shuffle_order([rel[p] for p in perm], 4, "train")]


def test_str_column_sort_order_is_pythons_for_any_names():
    """The numpy prefix sort agrees with ``sorted`` on long shared prefixes, non-ASCII names
    and surrogate-escaped bytes (where UTF-8 byte order and code point order differ)."""
    rng = random.Random(2)
    pool = ["", "a", "ab", "A", "é", "日本", "x" * 40 + "b", "x" * 40 + "a", "x" * 40, "b/\udcff", "b/\u00e9"]
    for trial in range(200):
        vals = [rng.choice(pool) + str(rng.randint(0, 3)) * rng.randint(0, 2) for _ in range(rng.randint(0, 50))]
        order = StrColumn(vals).sort_order(prefix=rng.choice([1, 4, 32])).tolist()
        assert order == sorted(range(len(vals)), key=vals.__getitem__), trial


def test_item_table_take_equals_appending_the_items():
    """``take`` copies columns (no Item made per row): the same table as appending the items
    one by one, codes renumbered in order of first use, odd keypaths kept."""
    rng = random.Random(7)
    items = []
    for i in range(300):
        c = rng.choice(["A", "B", "C"])
        kind = rng.randint(0, 3)
        if kind == 0:
            items.append(Item(f"{c}/images/{i}.png", c, keypath=f"{c}/{i}.png"))
        elif kind == 1:
            items.append(Item(f"{c}/{i}.png", c, split=rng.choice(["train", "test"]), group=f"p{i % 17}"))
        elif kind == 2:
            items.append(Item(f"{c}/odd{i}.png", c, keypath=f"other/{i}.png"))
        else:
            items.append(Item(f"m/{i}.png", "A|B", labels=("A", "B")))
    t = ItemTable.of(items)
    for idx in ([], [5], list(range(299, -1, -3)), [rng.randrange(300) for _ in range(200)]):
        got, want = t.take(idx), ItemTable.of(items[i] for i in idx)
        assert list(got) == list(want)
        assert got.label_names == want.label_names and got.split_names == want.split_names
        assert got.label_codes().tolist() == want.label_codes().tolist()
        assert got.group_codes().tolist() == want.group_codes().tolist()
        assert [got.key_source(i) for i in range(len(got))] == [want.key_source(i) for i in range(len(want))]


def assign_splits(relpaths, labels, together, ratios, seed):
    """The split name of each sample, from the build's one split rule."""
    return [ratios[j][0] for j in assign_split_indices(relpaths, labels, together, ratios, seed).tolist()]
