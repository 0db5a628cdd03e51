"""make_shards wds (issue 28 item 1): shards written by webdataset.TarWriter, in img2dataset's
layout and in the plain classification layout, adopted and trained on."""
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipeline import dali
from pipeline.records import find_images
from tests.shardkit import train_argv
from tools import make_shards
from train.limit import cli as train_cli


def jpeg(seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def img2dataset_shards(folder, n_shards=2, per_shard=8):
    """img2dataset's output: NNNNN.tar with KEY.jpg, KEY.txt (the caption), KEY.json (url, key,
    status, sizes, and the label from --save_additional_columns), plus NNNNN.parquet and
    NNNNN_stats.json beside each tar (not read by the adoption)."""
    folder.mkdir(parents=True)
    truth = {}
    for s in range(n_shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as w:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                data, label = jpeg(s * 100 + i), ["cat", "dog", "bird"][(s + i) % 3]
                w.write({"__key__": key, "jpg": data, "txt": f"a photo of a {label}",
                         "json": {"url": f"http://example.com/{key}.jpg", "key": key, "status": "success",
                                  "error_message": None, "width": 32, "height": 24, "label": label}})
                truth[key] = (data, label)
        pq.write_table(pa.table({"key": [f"{s:05d}{i:04d}" for i in range(per_shard)]}), folder / f"{s:05d}.parquet")
        (folder / f"{s:05d}_stats.json").write_text(json.dumps({"count": per_shard, "successes": per_shard}))
    return truth


@pytest.fixture(scope="module")
def crawled(tmp_path_factory):
    root = tmp_path_factory.mktemp("i2d") / "crawl"
    return root, img2dataset_shards(root)


def adopt(src, out, *extra):
    return make_shards.main(["wds", str(src), "--out", str(out), "--name", "adopted", "--shard-size", "5", *extra])


def test_img2dataset_shards_adopt_with_their_bytes(crawled, tmp_path):
    root, truth = crawled
    out = tmp_path / "shards"
    assert adopt(root, out, "--label-field", "json:label") == 0
    card = json.loads((out / "adopted.json").read_text())
    assert card["classes"] == ["bird", "cat", "dog"] and card["splits"]["train"]["count"] == 16
    m = pq.read_table(out / "adopted.parquet").to_pydict()
    assert sorted(m["key"]) == sorted(truth) and m["source"][0].endswith("00000.tar::0")
    wanted = {}
    for k, shard in zip(m["key"], m["shard"]):
        wanted.setdefault(shard, set()).add(k)
    stored = {key: data for _, key, data in find_images(out, wanted)}
    assert all(stored[k] == truth[k][0] for k in truth)                 # not re-encoded
    assert all(card["classes"][lab] == truth[k][1] for k, lab in zip(m["key"], m["label"]))


def test_tarwriter_cls_layout_splits_and_trains(tmp_path):
    root = tmp_path / "src"
    for split, n, seed in (("train", 30, 0), ("val", 8, 1)):
        (root / split).mkdir(parents=True)
        with wds.TarWriter(str(root / split / "part-000.tar")) as w:
            for i in range(n):
                w.write({"__key__": f"{split}_{i:03d}", "png": jpeg(seed * 100 + i, "PNG"), "cls": i % 2})
    out = tmp_path / "shards"
    assert adopt(root, out, "--recipe", "cifar") == 0
    card = json.loads((out / "adopted.json").read_text())
    assert card["classes"] == ["0", "1"] and card["splits"]["train"]["count"] == 30
    assert card["splits"]["val"]["count"] == 8
    for backend in ("cpu", "dali") if dali.dali_available() else ("cpu",):   # DALI: its CPU mode here
        assert train_cli(train_argv(out, tmp_path / backend, "--backend", backend)) == 0
        row = json.loads((tmp_path / backend / "metrics.jsonl").read_text().splitlines()[-1])
        assert row["samples_seen"] == card["splits"]["train"]["count"] and row["samples_skipped"] == 0


def test_damaged_members_and_missing_labels_are_named(tmp_path, capsys):
    root = tmp_path / "src"
    root.mkdir()
    with wds.TarWriter(str(root / "a.tar")) as w:
        for i in range(6):
            sample = {"__key__": f"s{i}", "jpg": jpeg(i) if i != 2 else b"garbage"}
            if i != 4:
                sample["cls"] = b"x" if i == 5 else i % 2
            w.write(sample)
    good = (root / "a.tar").read_bytes()
    (root / "b.tar").write_bytes(good[:len(good) // 2])                  # cut off mid-way (same keys)
    (root / "b.tar").rename(root / "b.tar.part")                       # not a .tar: ignored
    out = tmp_path / "shards"
    assert adopt(root, out) == 0
    card = json.loads((out / "adopted.json").read_text())
    reasons = {s["key"]: s["reason"] for s in card["skipped"]}
    assert set(reasons) == {"s2", "s4", "s5"}
    assert "no cls member" in reasons["s4"] and "bad cls member" in reasons["s5"]
    assert card["splits"]["train"]["count"] == 3


def test_a_cut_off_tar_keeps_what_it_had(tmp_path):
    root = tmp_path / "src"
    root.mkdir()
    with wds.TarWriter(str(root / "a.tar")) as w:
        for i in range(10):
            w.write({"__key__": f"k{i}", "jpg": jpeg(i), "cls": i % 2})
    data = (root / "a.tar").read_bytes()
    (root / "a.tar").write_bytes(data[:int(len(data) * 0.6)])
    out = tmp_path / "shards"
    assert adopt(root, out) == 0
    card = json.loads((out / "adopted.json").read_text())
    assert 0 < card["splits"]["train"]["count"] < 10
    assert any("shard damaged" in s["reason"] and s["source"] == "a.tar" for s in card["skipped"])


def test_bad_label_field_is_one_line(crawled, tmp_path, capsys):
    root, _ = crawled
    assert adopt(root, tmp_path / "o", "--label-field", "json") == 2
    assert "--label-field" in capsys.readouterr().err
