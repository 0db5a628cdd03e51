"""tools/make_shards.py table: CSV/TSV/Parquet image lists with string or integer labels."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_image
from pipeline.records import make_key
from tests.shardcheck import assert_one_line_error, read_back, run


# ---------------------------------------------------------------------------- table

def make_table_images(root: Path, n: int) -> list[str]:
    paths = []
    for i in range(n):
        rel = f"img/{i:02d}.{'png' if i % 3 == 0 else 'jpg'}"
        make_image(root / rel, size=(16 + i, 12), seed=i)
        paths.append(rel)
    return paths


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_table_string_labels_with_split_and_clean(tmp_path, capsys, suffix):
    root = tmp_path / "data"
    paths = make_table_images(root, 8)
    paths[7] = str(root / paths[7])          # absolute paths are taken as they are
    labels = ["dog", "cat", "cat", "emu", "dog", "cat", "emu", "dog"]
    clean = ["dog", "", "dog", "emu", "", "cat", "cat", "dog"]
    split = ["train", "train", "val", "test", "train", "train", "val", "test"]
    if suffix == "csv":
        (root / "t.csv").write_text("path,label,clean_label,split\n" + "".join(
            f"{p},{y},{c},{s}\n" for p, y, c, s in zip(paths, labels, clean, split)))
    else:                                    # a missing clean label as null here
        pq.write_table(pa.table({"path": paths, "label": labels, "split": split,
                                 "clean_label": [c or None for c in clean]}), root / "t.parquet")
    out = tmp_path / "shards"
    rc, _, err = run(["table", root / f"t.{suffix}", "--out", out, "--name", "t"], capsys)
    assert rc == 0, err
    got = read_back(out, "t", tmp_path)
    classes = got["card"]["classes"]
    assert classes == ["cat", "dog", "emu"]
    assert {k: v["count"] for k, v in got["card"]["splits"].items()} == {"train": 4, "val": 2, "test": 2}
    by_key = {s["key"]: s for sp in ("train", "val", "test") for s in got[sp]}
    for p, y, c, s in zip(paths, labels, clean, split):
        sample = by_key[make_key(p)]
        assert sample["split"] == s and sample["cls"] == classes.index(y)
        assert sample["clean"] == (classes.index(c) if c else -1)
        assert sample["data"] == (root / p).read_bytes()


@pytest.mark.parametrize("classes", [None, "zero,one,two,three"])
def test_table_parquet_int_labels(tmp_path, capsys, classes):
    root = tmp_path / "data"
    paths = make_table_images(root, 10)
    labels = [i % 4 for i in range(10)]
    clean = [None if i % 3 == 0 else (i + 1) % 4 for i in range(10)]
    pq.write_table(pa.table({"path": paths, "label": pa.array(labels, pa.int64()),
                             "clean_label": pa.array(clean, pa.int64())}), root / "t.parquet")
    out = tmp_path / "shards"
    extra = ["--classes", classes] if classes else []
    rc, _, err = run(["table", root / "t.parquet", "--out", out, "--val-fraction", "0.2", *extra], capsys)
    assert rc == 0, err
    got = read_back(out, "table", tmp_path)
    assert got["card"]["classes"] == (classes.split(",") if classes else ["0", "1", "2", "3"])
    assert {k: v["count"] for k, v in got["card"]["splits"].items()} == {"train": 8, "val": 2}
    by_key = {s["key"]: s for s in got["train"] + got["val"]}
    for p, y, c in zip(paths, labels, clean):
        assert by_key[make_key(p)]["cls"] == y
        assert by_key[make_key(p)]["clean"] == (-1 if c is None else c)


def test_table_pandas_style_float_clean_labels(tmp_path, capsys):
    """pandas stores an int column with gaps as float64 with NaN."""
    root = tmp_path / "data"
    paths = make_table_images(root, 4)
    pq.write_table(pa.table({"path": paths, "label": [0, 1, 1, 0],
                             "clean_label": [0.0, float("nan"), 0.0, None]}), root / "t.parquet")
    rc, _, err = run(["table", root / "t.parquet", "--out", tmp_path / "o"], capsys)
    assert rc == 0, err
    got = read_back(tmp_path / "o", "table", tmp_path)
    assert [s["clean"] for s in got["train"]] == [0, -1, 0, -1]


@pytest.mark.parametrize("rows,classes,needle", [
    ("a.jpg,zebra\n", "cat,dog", "zebra"),          # a name outside --classes
    ("a.jpg,5\n", "cat,dog", "5"),                  # an id outside --classes
    ("a.jpg,-1\n", "", "-1"),                       # a negative id
    ("a.jpg,cat,zebra\n", "cat,dog", "zebra"),      # a clean label outside the set
])
def test_table_label_outside_classes(tmp_path, capsys, rows, classes, needle):
    root = tmp_path / "data"
    make_image(root / "a.jpg")
    header = "path,label,clean_label\n" if rows.count(",") == 2 else "path,label\n"
    (root / "t.csv").write_text(header + rows)
    argv = ["table", root / "t.csv", "--out", tmp_path / "o"] + (["--classes", classes] if classes else [])
    rc, _, err = run(argv, capsys)
    assert_one_line_error(rc, err, needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,needle", [
    ("path,target\na.jpg,1\n", "label"),                       # missing column
    ("path,label,split\na.jpg,1,holdout\n", "holdout"),       # unknown split
    ("path,label\na.jpg,1\na.jpg,1\n", "duplicate key"),      # the same image twice
    ("path,label\n", "no rows"),                              # empty
    ("path,label\na.jpg,1,2,3\n", "cannot read"),             # not a well-formed CSV
])
def test_table_bad_tables(tmp_path, capsys, content, needle):
    root = tmp_path / "data"
    make_image(root / "a.jpg")
    (root / "t.csv").write_text(content)
    rc, _, err = run(["table", root / "t.csv", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, needle)


def test_table_unreadable_parquet(tmp_path, capsys):
    (tmp_path / "t.parquet").write_bytes(b"PAR1 not really")
    rc, _, err = run(["table", tmp_path / "t.parquet", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "t.parquet")
