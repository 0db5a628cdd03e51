"""tools/make_shards.py end to end on generated data in each format's real layout.

Every output set is read back the way its users will read it: stock webdataset (raw and
.decode()), GNU `tar -tf`, DALI's own `wds2idx` for the index files, and the card and
manifest checked against the tars (tests/shardcheck.py). Tables: test_make_shards_tables.py;
workers, atomicity and DALI: test_make_shards_jobs.py."""

import gzip
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import make_image
from pipeline.records import make_key
from tools.fetch_mnist import FILES as MNIST_FILES
from tests.shardcheck import CLOTHING1M_CLASSES, assert_one_line_error, make_clothing1m, read_back, run


@pytest.mark.parametrize("annotations,newline", [(False, "\n"), (True, "\n"), (True, "\r\n")],
                         ids=["txt-at-root", "txt-in-annotations", "txt-in-annotations-crlf"])
def test_clothing1m_round_trip(tmp_path, capsys, annotations, newline):
    src = tmp_path / "clothing1m"
    truth = make_clothing1m(src, annotations, newline)
    out = tmp_path / "shards"
    rc, stdout, err = run(["clothing1m", src, "--out", out, "--name", "c1m", "--shard-size", "4"], capsys)
    assert rc == 0, err
    assert "train 10, val 3, test 3" in stdout
    got = read_back(out, "c1m", tmp_path)
    card = got["card"]
    assert card["classes"] == CLOTHING1M_CLASSES
    assert {k: v["count"] for k, v in card["splits"].items()} == {"train": 10, "val": 3, "test": 3}
    assert [s["file"] for s in card["splits"]["train"]["shards"]] == ["c1m-000.tar", "c1m-001.tar", "c1m-002.tar"]
    assert card["skipped"] == []
    for split, rels in truth["splits"].items():
        samples = got[split]
        assert [s["key"] for s in samples] == [make_key(r) for r in rels]
        for s, rel in zip(samples, rels):
            assert "," not in s["key"] and "." not in s["key"]
            assert s["data"] == (src / rel).read_bytes()          # no --resize: bytes kept as they are
            assert s["ext"] == "jpg" and s["source"] == str(src / rel)
            if split == "train":
                assert s["cls"] == truth["noisy"][rel]
                assert s["clean"] == truth["clean"].get(rel, -1)
            else:
                assert s["cls"] == s["clean"] == truth["clean"][rel]
    train = {s["key"]: s for s in got["train"]}
    first, fourth = truth["splits"]["train"][0], truth["splits"]["train"][3]
    assert train[make_key(first)]["clean"] != train[make_key(first)]["cls"]   # noise is visible
    assert train[make_key(fourth)]["clean"] == train[make_key(fourth)]["cls"]
    assert sum(s["clean"] >= 0 for s in got["train"]) == 2
    # the clean train list is not part of the output
    keys = {r["key"] for r in got["rows"]}
    assert not keys & {make_key(r) for r in truth["clean_only"]}
    # indices: train, then val, then test
    assert [r["index"] for r in got["rows"]] == list(range(16))


def test_clothing1m_resize_never_upscales(tmp_path, capsys):
    src = tmp_path / "clothing1m"
    truth = make_clothing1m(src, annotations=True)
    out = tmp_path / "shards"
    rc, _, err = run(["clothing1m", src, "--out", out, "--resize", "256", "--shard-size", "100"], capsys)
    assert rc == 0, err
    got = read_back(out, "clothing1m", tmp_path)
    assert got["card"]["options"]["resize"] == "256"
    checked = {"down": 0, "kept": 0}
    for split in ("train", "val", "test"):
        for s in got[split]:
            rel = s["source"][len(str(src)) + 1:]
            w, h = truth["sizes"][rel]
            assert s["ext"] == "jpg"
            if min(w, h) > 256:
                assert min(s["image"].size) == 256
                long_src, long_got = max(w, h), max(s["image"].size)
                assert abs(long_got - long_src * 256 / min(w, h)) <= 1
                assert (s["image"].size[0] > s["image"].size[1]) == (w > h)
                assert s["data"] != (src / rel).read_bytes()
                checked["down"] += 1
            else:   # at or under 256 already: stored untouched, never upscaled
                assert s["image"].size == (w, h)
                assert s["data"] == (src / rel).read_bytes()
                checked["kept"] += 1
    assert checked["down"] >= 8 and checked["kept"] >= 4


def test_clothing1m_layout_errors(tmp_path, capsys):
    src = tmp_path / "c"
    truth = make_clothing1m(src, annotations=False)
    (truth["txt"] / "clean_test_key_list.txt").unlink()
    rc, _, err = run(["clothing1m", src, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "clean_test_key_list.txt")

    truth = make_clothing1m(src, annotations=False)
    with open(truth["txt"] / "clean_val_key_list.txt", "a") as f:
        f.write("images/1/11/unlabelled.jpg\n")
    rc, _, err = run(["clothing1m", src, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "images/1/11/unlabelled.jpg")

    truth = make_clothing1m(src, annotations=False)        # a noisy label with no class name
    rel = truth["splits"]["train"][2]
    kv = truth["txt"] / "noisy_label_kv.txt"
    kv.write_text(kv.read_text().replace(f"{rel} {truth['noisy'][rel]}\n", f"{rel} 14\n"))
    rc, _, err = run(["clothing1m", src, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "14")

    truth = make_clothing1m(src, annotations=False)        # a malformed kv line
    with open(truth["txt"] / "clean_label_kv.txt", "a") as f:
        f.write("images/1/11/x.jpg\n")
    rc, _, err = run(["clothing1m", src, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "clean_label_kv.txt")

    truth = make_clothing1m(src, annotations=False)        # the same image listed twice
    with open(truth["txt"] / "noisy_train_key_list.txt", "a") as f:
        f.write(truth["splits"]["train"][1] + "\n")
    rc, _, err = run(["clothing1m", src, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "duplicate key", make_key(truth["splits"]["train"][1]))
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- MNIST

def write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    data = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data += arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)


def make_mnist(folder: Path, n_train=50, n_test=12, gz=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
              "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    arrays["train_images"][0] = 0       # extremes survive too
    arrays["train_images"][1] = 255
    folder.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        write_idx(folder / (MNIST_FILES[key][0] + (".gz" if gz else "")), arr, gz)
    return arrays


@pytest.mark.parametrize("layout,gz", [("", True), ("MNIST/raw", False)], ids=["gz", "torchvision-raw"])
def test_mnist_lossless_round_trip(tmp_path, capsys, layout, gz):
    arrays = make_mnist(tmp_path / "idx" / layout, gz=gz)
    out = tmp_path / "shards"
    rc, stdout, err = run(["mnist", tmp_path / "idx", "--out", out, "--name", "m", "--shard-size", "16"], capsys)
    assert rc == 0, err
    assert "train 40, val 10, test 12" in stdout
    got = read_back(out, "m", tmp_path)
    assert got["card"]["classes"] == [str(i) for i in range(10)]
    seen = []
    for split in ("train", "val", "test"):
        part = "test" if split == "test" else "train"
        for s in got[split]:
            m = re.fullmatch(rf"mnist_{part}_(\d+)", s["key"])
            assert m, s["key"]
            i = int(m.group(1))
            assert s["ext"] == "png" and s["data"][:8] == b"\x89PNG\r\n\x1a\n"
            png = Image.open(io.BytesIO(s["data"]))
            assert png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), arrays[f"{part}_images"][i])
            assert s["cls"] == s["clean"] == int(arrays[f"{part}_labels"][i])
            seen.append((part, i))
    assert sorted(seen) == sorted([("train", i) for i in range(50)] + [("test", i) for i in range(12)])


def val_keys(out: Path, name: str) -> list[str]:
    rows = pq.read_table(out / f"{name}.parquet").to_pylist()
    return [r["key"] for r in rows if r["split"] == "val"]


def test_mnist_split_is_seeded(tmp_path, capsys):
    make_mnist(tmp_path / "idx", n_train=60, n_test=4)
    outs = {}
    for tag, extra in (("a", []), ("b", []), ("c", ["--seed", "1"]), ("d", ["--val-fraction", "0.5"])):
        rc, _, err = run(["mnist", tmp_path / "idx", "--out", tmp_path / tag, *extra], capsys)
        assert rc == 0, err
        outs[tag] = val_keys(tmp_path / tag, "mnist")
    assert len(outs["a"]) == 12 and len(outs["d"]) == 30
    assert outs["a"] == outs["b"] and outs["a"] != outs["c"]
    assert outs["a"] == sorted(outs["a"])          # order inside a split follows the source
    for f in (tmp_path / "a").iterdir():
        if f.suffix in (".tar", ".idx", ".parquet"):
            assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()


def test_mnist_bad_sources(tmp_path, capsys):
    make_mnist(tmp_path / "idx")
    (tmp_path / "idx" / (MNIST_FILES["test_labels"][0] + ".gz")).unlink()
    rc, _, err = run(["mnist", tmp_path / "idx", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, MNIST_FILES["test_labels"][0])

    arrays = make_mnist(tmp_path / "idx2")                 # 50 images, 49 labels
    write_idx(tmp_path / "idx2" / (MNIST_FILES["train_labels"][0] + ".gz"), arrays["train_labels"][:49], True)
    rc, _, err = run(["mnist", tmp_path / "idx2", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err)

    arrays = make_mnist(tmp_path / "idx3")                 # label 10 is not a digit
    arrays["test_labels"][3] = 10
    write_idx(tmp_path / "idx3" / (MNIST_FILES["test_labels"][0] + ".gz"), arrays["test_labels"], True)
    rc, _, err = run(["mnist", tmp_path / "idx3", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "10")

    (tmp_path / "idx4").mkdir()                              # garbage where an idx file should be
    make_mnist(tmp_path / "idx4")
    (tmp_path / "idx4" / (MNIST_FILES["train_images"][0] + ".gz")).write_bytes(b"\x1f\x8bgarbage")
    rc, _, err = run(["mnist", tmp_path / "idx4", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, MNIST_FILES["train_images"][0])
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- imagefolder

def test_imagefolder_flat_with_val_fraction(tmp_path, capsys):
    root = tmp_path / "folder"
    for c, n in (("cat", 6), ("dog", 5), ("emu", 1)):
        for i in range(n):
            make_image(root / c / f"{c}{i}.{'png' if i % 2 else 'jpg'}", size=(20 + i, 16), seed=i)
    make_image(root / "dog" / "nested" / "deep.jpg", seed=9)     # subfolders of a class count
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "README.md").write_text("ignored")
    out = tmp_path / "shards"
    rc, stdout, err = run(["imagefolder", root, "--out", out, "--name", "f", "--val-fraction", "0.25",
                           "--shard-size", "3"], capsys)
    assert rc == 0, err
    got = read_back(out, "f", tmp_path)
    assert got["card"]["classes"] == ["cat", "dog", "emu"]
    assert {k: v["count"] for k, v in got["card"]["splits"].items()} == {"train": 10, "val": 3}
    for s in got["train"] + got["val"]:
        cls_name = s["key"].split("_")[0]
        assert s["cls"] == s["clean"] == ["cat", "dog", "emu"].index(cls_name)
        assert s["data"] == Path(s["source"]).read_bytes()
        assert s["ext"] == Path(s["source"]).suffix[1:]
    assert "dog_nested_deep" in {s["key"] for s in got["train"] + got["val"]}
    # without --val-fraction there is no val split
    rc, _, err = run(["imagefolder", root, "--out", tmp_path / "noval"], capsys)
    assert rc == 0, err
    assert set(read_back(tmp_path / "noval", "imagefolder", tmp_path)["card"]["splits"]) == {"train"}


def test_imagefolder_split_folders(tmp_path, capsys):
    root = tmp_path / "folder"
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        for c in ("b_class", "a_class"):
            for i in range(n):
                make_image(root / split / c / f"{i}.jpg", seed=i)
    out = tmp_path / "shards"
    rc, _, err = run(["imagefolder", root, "--out", out, "--val-fraction", "0.5"], capsys)
    assert rc == 0, err
    got = read_back(out, "imagefolder", tmp_path)
    assert got["card"]["classes"] == ["a_class", "b_class"]
    # a val/ folder exists, so --val-fraction carves nothing out of train
    assert {k: v["count"] for k, v in got["card"]["splits"].items()} == {"train": 8, "val": 4, "test": 6}
    for split in ("train", "val", "test"):
        for s in got[split]:
            assert s["key"].startswith(f"{split}_")
            assert s["cls"] == s["clean"] == (0 if "_a_class_" in s["key"] else 1)

    # train/ and test/ only: val is carved from train
    shutil.rmtree(root / "val")
    rc, _, err = run(["imagefolder", root, "--out", tmp_path / "o2", "--val-fraction", "0.5"], capsys)
    assert rc == 0, err
    got = read_back(tmp_path / "o2", "imagefolder", tmp_path)
    assert {k: v["count"] for k, v in got["card"]["splits"].items()} == {"train": 4, "val": 4, "test": 6}

    # a class in test/ that train/ lacks
    make_image(root / "test" / "c_class" / "0.jpg")
    rc, _, err = run(["imagefolder", root, "--out", tmp_path / "o3"], capsys)
    assert_one_line_error(rc, err, "c_class")


def test_imagefolder_resize_png_and_small(tmp_path, capsys):
    root = tmp_path / "folder"
    big = make_image(root / "a" / "big.png", size=(300, 200), mode="RGBA")
    small = make_image(root / "a" / "small.png", size=(50, 60), mode="L")
    gray = make_image(root / "b" / "gray.jpg", size=(180, 400), mode="L")
    out = tmp_path / "shards"
    rc, _, err = run(["imagefolder", root, "--out", out, "--resize", "100", "--quality", "80"], capsys)
    assert rc == 0, err
    got = {s["key"]: s for s in read_back(out, "imagefolder", tmp_path)["train"]}
    assert got["a_big"]["ext"] == "jpg" and got["a_big"]["image"].size == (150, 100)
    assert got["a_small"]["ext"] == "png" and got["a_small"]["data"] == small.read_bytes()
    assert got["b_gray"]["ext"] == "jpg" and got["b_gray"]["image"].size == (100, 222)
    assert big.exists() and gray.exists()


def test_unreadable_images_are_skipped_and_listed(tmp_path, capsys, write_image):
    root = tmp_path / "folder"
    for c in ("a", "b"):
        for i in range(3):
            write_image(root / c / f"ok{i}.jpg", seed=i)
    (root / "a" / "garbage.jpg").write_bytes(b"this is not a JPEG at all" * 10)
    (root / "b" / "empty.png").write_bytes(b"")
    good = (root / "a" / "ok0.jpg").read_bytes()
    (root / "b" / "truncated.jpg").write_bytes(good[:len(good) // 2])
    out = tmp_path / "shards"
    rc, stdout, err = run(["imagefolder", root, "--out", out, "--shard-size", "4"], capsys)
    assert rc == 0, err
    assert "skipped 3" in stdout
    got = read_back(out, "imagefolder", tmp_path)
    card = got["card"]
    assert card["splits"]["train"]["count"] == 6
    skipped = {Path(s["source"]).name: s for s in card["skipped"]}
    assert sorted(skipped) == ["empty.png", "garbage.jpg", "truncated.jpg"]
    assert skipped["garbage.jpg"]["key"] == "a_garbage"
    assert all(s["reason"] for s in card["skipped"])
    assert {s["key"] for s in got["train"]} == {f"{c}_ok{i}" for c in "ab" for i in range(3)}
    assert len(got["rows"]) == 6
    assert all(n in err for n in skipped)        # listed on stderr too


def test_a_shard_whose_images_are_all_unreadable(tmp_path, capsys):
    """An all-skipped shard must not leave an empty tar: DALI refuses an index with 0 samples
    and stock webdataset raises on a split with no samples."""
    root = tmp_path / "folder"
    for i in range(6):
        make_image(root / "a" / f"{i}.jpg", seed=i)
    for i in (2, 3):
        (root / "a" / f"{i}.jpg").write_bytes(b"broken")
    out = tmp_path / "shards"
    rc, _, err = run(["imagefolder", root, "--out", out, "--shard-size", "2"], capsys)
    assert rc == 0, err
    got = read_back(out, "imagefolder", tmp_path)
    assert [(s["file"], s["count"]) for s in got["card"]["splits"]["train"]["shards"]] == \
        [("imagefolder-000.tar", 2), ("imagefolder-001.tar", 2)]
    assert [s["key"] for s in got["train"]] == ["a_0", "a_1", "a_4", "a_5"]
    assert len(got["card"]["skipped"]) == 2


def test_duplicate_keys_stop(tmp_path, capsys):
    root = tmp_path / "folder"
    make_image(root / "a" / "x.jpg")
    make_image(root / "a" / "x.png")
    rc, _, err = run(["imagefolder", root, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "duplicate key", "a_x")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("fmt,name", [("mnist", "idx"), ("clothing1m", "c1m"),
                                      ("imagefolder", "folder"), ("table", "t.csv")])
def test_missing_source(tmp_path, capsys, fmt, name):
    rc, _, err = run([fmt, tmp_path / name, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "not found", str(tmp_path / name))
    assert not (tmp_path / "o").exists()
