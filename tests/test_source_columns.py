"""pipeline/convert/columns.Records and the Clothing1M reader that builds it (issue 16: a split as
columns, not a Python tuple a sample, so make_shards' memory does not grow with the set)."""
import numpy as np
import pyarrow as pa
import pytest

from pipeline.records import make_key
from pipeline.shards import DataError
from pipeline.convert import columns as source_columns, sources as shard_sources
from pipeline.convert.columns import Records

ROWS = [("a", 1, -1, "/x/a.jpg"), ("b", 0, 0, "/x/b.jpg"), ("c", 2, 2, "/x/c.jpg")]


def test_records_read_as_the_tuples_they_were_made_from(monkeypatch):
    monkeypatch.setattr(source_columns, "CHUNK", 2)       # iteration crosses a chunk boundary
    r = Records.from_tuples(ROWS)
    assert len(r) == 3 and list(r) == ROWS and r == ROWS
    assert r[1] == ROWS[1] and r[-1] == ROWS[2]
    assert list(r[1:]) == ROWS[1:] and list(r.take([2, 0])) == [ROWS[2], ROWS[0]]
    assert list(r.with_labels(np.array([5, 6, 7]))) == [(k, n, c, s) for (k, _, c, s), n in zip(ROWS, (5, 6, 7))]
    with pytest.raises(IndexError):
        r[3]


def test_in_memory_images_stay_one_array():
    images = np.arange(3 * 4, dtype=np.uint8).reshape(3, 2, 2)
    r = Records.from_tuples([(f"k{i}", i, i, images[i]) for i in range(3)])
    assert r.in_memory and r.sources.shape == (3, 2, 2)
    assert np.array_equal(r[2][3], images[2]) and r.text_columns([0, 1, 2])[1].to_pylist() == ["", "", ""]


def write_c1m(root, noisy, clean, train, val, test):
    (root / "annotations").mkdir(parents=True)
    files = {"category_names_eng.txt": "T-Shirt\nShirt\nKnitwear\n",
             "noisy_label_kv.txt": noisy, "clean_label_kv.txt": clean,
             "noisy_train_key_list.txt": train, "clean_val_key_list.txt": val, "clean_test_key_list.txt": test}
    for name, text in files.items():
        (root / "annotations" / name).write_text(text)


def test_clothing1m_columns_join_the_label_files(tmp_path):
    write_c1m(tmp_path, "images/0/a.jpg 1\nimages/0/b.jpg 2\n\nimages/0/a.jpg 0\n",   # a twice: the last line wins
              "images/0/a.jpg 2\nimages/1/v.jpg 1\nimages/1/t.jpg 0\n",
              "images/0/a.jpg\nimages/0/b.jpg\n", "images/1/v.jpg\n", "images/1/t.jpg\n")
    src = shard_sources.clothing1m(tmp_path, 0.0, 0)
    assert isinstance(src.splits["train"], Records)
    assert list(src.splits["train"]) == [("images_0_a", 0, 2, str(tmp_path / "images/0/a.jpg")),
                                         ("images_0_b", 2, -1, str(tmp_path / "images/0/b.jpg"))]
    assert list(src.splits["val"]) == [("images_1_v", 1, 1, str(tmp_path / "images/1/v.jpg"))]
    shard_sources.check_unique_keys(src)
    shard_sources.check_labels(src)


def test_clothing1m_names_a_listed_image_without_a_label(tmp_path):
    write_c1m(tmp_path, "images/0/a.jpg 1\n", "images/1/v.jpg 1\n", "images/0/a.jpg\nimages/0/zz.jpg\n",
              "images/1/v.jpg\n", "")
    with pytest.raises(DataError, match="images/0/zz.jpg has no label"):
        shard_sources.clothing1m(tmp_path, 0.0, 0)


def test_duplicate_keys_and_bad_labels_are_named(tmp_path):
    src = shard_sources.Source(["a", "b", "c"], {"train": ROWS, "val": [("b", 1, 1, "/y/b.png")]})
    with pytest.raises(DataError, match="duplicate key 'b': /x/b.jpg and /y/b.png"):
        shard_sources.check_unique_keys(src)
    src = shard_sources.Source(["a", "b"], {"train": ROWS})
    with pytest.raises(DataError, match="train sample 'c': label 2 is outside the 2 classes"):
        shard_sources.check_labels(src)


def test_derived_keys_and_paths_read_as_the_tuples_they_stand_for(monkeypatch):
    """A Clothing1M split keeps its names alone; key and path are made when a row is read."""
    monkeypatch.setattr(source_columns, "CHUNK", 2)
    names = ["images/0/a.jpg", "images/1/b.jpg", "images/1/c.png"]
    r = Records(None, [1, 0, 2], [-1, 0, 2], pa.chunked_array([names[:2], names[2:]]), root="/data/c1m")
    want = [(make_key(n), y, c, f"/data/c1m/{n}") for n, y, c in zip(names, (1, 0, 2), (-1, 0, 2))]
    assert list(r) == want and r[1] == want[1] and r[-1] == want[2]
    assert list(r.take([2, 0])) == [want[2], want[0]]
    assert list(r.with_labels(np.array([7, 8, 9])))[0] == (want[0][0], 7, -1, want[0][3])
    assert list(r.iter_keys()) == r.keys.to_pylist() == [w[0] for w in want]
    keys, sources = r.text_columns([1, 2])
    assert keys.to_pylist() == [want[1][0], want[2][0]] and sources.to_pylist() == [want[1][3], want[2][3]]


def test_duplicate_check_compares_keys_whose_hashes_meet(monkeypatch):
    """Every key hashed alike (a forced collision): distinct keys pass, a real duplicate is named."""
    monkeypatch.setattr(shard_sources, "hash", lambda key: 7, raising=False)
    shard_sources.check_unique_keys(shard_sources.Source(["a", "b", "c"], {"train": ROWS}))
    src = shard_sources.Source(["a", "b", "c"], {"train": ROWS, "test": [("c", 1, 1, "/z/c.png")]})
    with pytest.raises(DataError, match="duplicate key 'c': /x/c.jpg and /z/c.png"):
        shard_sources.check_unique_keys(src)


def test_clothing1m_label_lookup_crosses_chunks(tmp_path, monkeypatch):
    """The label files are joined by digest, CHUNK lines at a time; a path listed again in a
    later chunk keeps its last label."""
    monkeypatch.setattr(shard_sources, "CHUNK", 3)
    train = [f"images/0/{i}.jpg" for i in range(8)]
    noisy = "".join(f"{p} {i % 3}\n" for i, p in enumerate(train)) + f"{train[1]} 2\n"
    write_c1m(tmp_path, noisy, f"{train[4]} 0\nimages/1/v.jpg 1\n", "\n".join(train) + "\n", "images/1/v.jpg\n", "")
    src = shard_sources.clothing1m(tmp_path, 0.0, 0)
    rows = list(src.splits["train"])
    assert [r[1] for r in rows] == [0, 2, 2, 0, 1, 2, 0, 1]
    assert [r[2] for r in rows] == [-1, -1, -1, -1, 0, -1, -1, -1]
    assert rows[3] == ("images_0_3", 0, -1, str(tmp_path / "images/0/3.jpg"))
