"""make_shards hf (issue 28 item 2): Hugging Face Parquet datasets, built here with pyarrow alone
in the layout `datasets` writes (an Image struct column, a ClassLabel in the schema metadata)."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.records import find_images
from tests.shardkit import train_argv
from tools import make_shards
from train.limit import cli as train_cli

NAMES = ["cat", "dog", "bird"]


def image_bytes(seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_hf(path, rows: list[tuple[bytes, int]], names=NAMES, row_group_size=4, image_col="image"):
    """A Parquet file as `datasets` writes it: {bytes, path} structs, int64 labels, the features
    as JSON under the schema metadata key `huggingface`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.array([{"bytes": b, "path": None} for b, _ in rows],
                     pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    t = pa.table({image_col: image, "label": pa.array([y for _, y in rows], pa.int64())})
    if names is not None:
        feats = {image_col: {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
        t = t.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": feats}}).encode()})
    pq.write_table(t, path, row_group_size=row_group_size)
    return rows


def rows(n: int, seed: int) -> list[tuple[bytes, int]]:
    return [(image_bytes(seed * 1000 + i, "JPEG" if i % 3 else "PNG"), (seed + i) % 3) for i in range(n)]


@pytest.fixture(scope="module")
def hub_files(tmp_path_factory):
    """data/train-0000{0,1}-of-00002.parquet + data/test-00000-of-00001.parquet."""
    root = tmp_path_factory.mktemp("hf") / "ds"
    a = write_hf(root / "data" / "train-00000-of-00002.parquet", rows(10, 1))
    b = write_hf(root / "data" / "train-00001-of-00002.parquet", rows(9, 2))
    t = write_hf(root / "data" / "test-00000-of-00001.parquet", rows(6, 3))
    return root, {"train": a + b, "test": t}


def test_hub_layout_converts_with_class_names_and_bytes_kept(hub_files, tmp_path):
    root, truth = hub_files
    out = tmp_path / "shards"
    assert make_shards.main(["hf", str(root), "--out", str(out), "--name", "pets", "--shard-size", "7"]) == 0
    card = json.loads((out / "pets.json").read_text())
    assert card["classes"] == NAMES
    assert card["splits"]["train"]["count"] == 19 and card["splits"]["test"]["count"] == 6
    m = pq.read_table(out / "pets.parquet").to_pydict()
    assert m["key"][0] == "data_train-00000-of-00002_0" and m["source"][0].endswith("train-00000-of-00002.parquet::0")
    by_key = dict(zip(m["key"], zip(m["label"], m["clean_label"], m["shard"])))
    wanted = {}
    for k, (_, _, shard) in by_key.items():
        wanted.setdefault(shard, set()).add(k)
    stored = {key: data for _, key, data in find_images(out, wanted)}
    for split, prefix, n_files in (("train", "data_train-0000", 10), ("test", "data_test-00000-of-00001", 6)):
        for i, (data, label) in enumerate(truth[split]):
            key = (f"data_train-00000-of-00002_{i}" if i < 10 else f"data_train-00001-of-00002_{i - 10}") \
                if split == "train" else f"{prefix}_{i}"
            assert stored[key] == data                       # JPEG and PNG bytes as they were
            assert by_key[key][:2] == (label, -1)


def test_split_folders_validation_and_a_damaged_row(tmp_path):
    root = tmp_path / "ds"
    train = rows(8, 4)
    train[5] = (b"not an image", 1)
    write_hf(root / "default" / "train" / "0000.parquet", train, row_group_size=3)
    write_hf(root / "default" / "validation" / "0000.parquet", rows(4, 5))
    out = tmp_path / "shards"
    assert make_shards.main(["hf", str(root), "--out", str(out), "--name", "x"]) == 0
    card = json.loads((out / "x.json").read_text())
    assert card["splits"]["train"]["count"] == 7 and card["splits"]["val"]["count"] == 4
    assert [(s["key"], s["reason"].split(":")[0]) for s in card["skipped"]] == \
        [("default_train_0000_5", "UnidentifiedImageError")]


def test_without_metadata_classes_are_ids_or_given(tmp_path, capsys):
    root = tmp_path / "plain.parquet"
    write_hf(root, rows(6, 6), names=None, image_col="img")
    assert make_shards.main(["hf", str(root), "--out", str(tmp_path / "a"), "--name", "a"]) == 0
    assert json.loads((tmp_path / "a" / "a.json").read_text())["classes"] == ["0", "1", "2"]
    assert "no ClassLabel names" in capsys.readouterr().err
    assert make_shards.main(["hf", str(root), "--out", str(tmp_path / "b"), "--name", "b", "--classes", "x,y,z"]) == 0
    assert json.loads((tmp_path / "b" / "b.json").read_text())["classes"] == ["x", "y", "z"]


def test_not_an_image_dataset_is_one_line(tmp_path, capsys):
    pq.write_table(pa.table({"text": ["a"], "label": [0]}), tmp_path / "train.parquet")
    assert make_shards.main(["hf", str(tmp_path / "train.parquet"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no image and label columns" in err


def test_a_converted_hub_dataset_trains(hub_files, tmp_path):
    root, _ = hub_files
    out = tmp_path / "shards"
    assert make_shards.main(["hf", str(root), "--out", str(out), "--name", "pets", "--val-fraction", "0.25",
                             "--recipe", "cifar"]) == 0
    assert train_cli(train_argv(out, tmp_path / "run")) == 0
    assert json.loads((tmp_path / "run" / "final.json").read_text())["epochs"] == 1
