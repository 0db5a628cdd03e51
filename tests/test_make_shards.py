"""tools/make_shards.py end to end on generated data in each format's real layout.

Every output set is read back the way its users will read it: stock webdataset (raw and
.decode()), GNU `tar -tf`, DALI's own `wds2idx` for the index files, and the card and
manifest checked against the tars."""
import gzip
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

import pipeline.writer
from conftest import make_image
from pipeline.records import encode_sample, make_key
from tools import make_shards
from tools.fetch_mnist import FILES as MNIST_FILES

MANIFEST_COLUMNS = ["key", "split", "shard", "index", "label", "clean_label", "source"]
SAMPLE_FIELDS = {"jpg", "png", "cls", "json", "ids"}   # ids: the optional fixed-width extra
CLOTHING1M_CLASSES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
                      "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]


# ---------------------------------------------------------------------------- helpers

def run(argv, capsys) -> tuple[int, str, str]:
    rc = make_shards.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("make_shards: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def tar_members(tar: Path) -> list[str]:
    r = subprocess.run(["tar", "-tf", str(tar)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return r.stdout.split("\n")[:-1]


def reference_idx(tar: Path, tmp: Path) -> str:
    """The index DALI's own tool writes for `tar` (wds2idx ships with nvidia-dali)."""
    try:
        from wds2idx import IndexCreator
    except ImportError:   # without the dali extra: the same format from tarfile's offsets
        import tarfile
        groups, last = [], None
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                base, ext = m.name.split(".", 1)
                if base != last:
                    groups.append([])
                    last = base
                groups[-1].append(f"{ext} {m.offset_data} {m.size} {m.name}")
        return f"v1.2 {len(groups)}\n" + "".join(" ".join(g) + "\n" for g in groups)
    path = tmp / (tar.stem + ".ref.idx")
    with IndexCreator(str(tar), str(path), verbose=False) as ic:
        ic.create_index()
    return path.read_text()


def read_back(out: Path, name: str, tmp: Path) -> dict:
    """Check one output set against the contract (design.md section 4) and return
    {"card", "rows", split: [sample dicts in shard order]}."""
    card = json.loads((out / f"{name}.json").read_text())
    table = pq.read_table(out / f"{name}.parquet")
    assert table.column_names == MANIFEST_COLUMNS
    rows = table.to_pylist()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    listed = []
    result = {"card": card, "rows": rows}
    for split, info in card["splits"].items():
        prefix = name if split == "train" else f"{name}-{split}"
        files = [s["file"] for s in info["shards"]]
        assert files == [f"{prefix}-{i:03d}.tar" for i in range(len(files))]
        listed += files
        samples = []
        for shard in info["shards"]:
            tar = out / shard["file"]
            members = tar_members(tar)
            # each sample's members are contiguous and share a key without dots
            groups: list[tuple[str, list[str]]] = []
            for m in members:
                key, ext = m.split(".", 1)
                if not groups or groups[-1][0] != key:
                    groups.append((key, []))
                groups[-1][1].append(ext)
            assert len({k for k, _ in groups}) == len(groups) == shard["count"] > 0
            # the DALI index beside the tar is exactly what wds2idx writes
            assert (out / f"{tar.stem}.idx").read_text() == reference_idx(tar, tmp)
            raw = list(wds.WebDataset([str(tar)], shardshuffle=False))
            assert [s["__key__"] for s in raw] == [k for k, _ in groups]
            for s, (key, exts) in zip(raw, groups):
                fields = {k for k in s if not k.startswith("__")}
                assert fields == set(exts) and fields <= SAMPLE_FIELDS
                assert "." not in key and "/" not in key
                images = fields & {"jpg", "png"}
                assert len(images) == 1 and {"cls", "json"} <= fields
                ext = images.pop()
                assert re.fullmatch(rb"-?\d+", s["cls"])
                meta = json.loads(s["json"])
                assert isinstance(meta["index"], int) and isinstance(meta["clean_label"], int)
                img = Image.open(io.BytesIO(s[ext]))
                assert img.format == {"jpg": "JPEG", "png": "PNG"}[ext]
                samples.append({"key": key, "ext": ext, "data": s[ext], "cls": int(s["cls"]),
                                "clean": meta["clean_label"], "index": meta["index"],
                                "source": meta.get("source", ""), "shard": shard["file"], "split": split})
        assert len(samples) == info["count"]
        # stock webdataset's decoders agree, over the whole split at once
        urls = [str(out / f) for f in files]
        dec = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
        assert [d["__key__"] for d in dec] == [s["key"] for s in samples]
        for d, s in zip(dec, samples):
            assert d["cls"] == s["cls"] and d["json"]["index"] == s["index"]
            assert d["json"]["clean_label"] == s["clean"]
            assert isinstance(d[s["ext"]], Image.Image)
            s["image"] = d[s["ext"]]
        result[split] = samples
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(listed)
    assert sorted(p.name for p in out.glob("*.idx")) == sorted(f[:-4] + ".idx" for f in listed)
    everything = [s for split in card["splits"] for s in result[split]]
    indices = [s["index"] for s in everything]
    assert len(set(indices)) == len(indices)
    assert all(0 <= i < card["num_indices"] for i in indices)
    assert len({s["key"] for s in everything}) == len(everything)
    # the manifest is the tars, row for row
    assert [(r["key"], r["split"], r["shard"], r["index"], r["label"], r["clean_label"], r["source"])
            for r in rows] == [(s["key"], s["split"], s["shard"], s["index"], s["cls"], s["clean"], s["source"])
                               for s in everything]
    k = len(card["classes"])
    assert all(0 <= s["cls"] < k and -1 <= s["clean"] < k for s in everything)
    return result


# ---------------------------------------------------------------------------- Clothing1M

CLOTHING_SIZES = [(300, 400), (400, 300), (200, 150), (256, 320), (640, 256), (120, 500), (257, 900)]


def make_clothing1m(root: Path, annotations: bool, newline: str = "\n") -> dict:
    """A tiny Clothing1M in its real layout. Returns what the converter should produce."""
    rels = [f"images/{i % 10}/{(i * 37) % 100:02d}/{3761328114 + i * 7919},{905362226 + i}.jpg"
            for i in range(19)]
    rels[5] = "images/0/00/12345678.jpg"
    sizes = {}
    for i, rel in enumerate(rels):
        sizes[rel] = CLOTHING_SIZES[i % len(CLOTHING_SIZES)]
        make_image(root / rel, size=sizes[rel], seed=i)
    train, val, test, clean_only = rels[:10], rels[10:13], rels[13:16], rels[16:]
    noisy = {rel: (3 * i + 1) % 14 for i, rel in enumerate(train)}
    noisy["images/9/99/not_in_any_list.jpg"] = 2          # kv files list more than the key lists
    clean = {rel: (i * 5) % 14 for i, rel in enumerate(val + test + clean_only, start=1)}
    clean[train[0]] = (noisy[train[0]] + 1) % 14          # a noisy train image with a clean label too
    clean[train[3]] = noisy[train[3]]
    txt = root / "annotations" if annotations else root
    txt.mkdir(parents=True, exist_ok=True)

    def lines(items):
        return "".join(f"{x}{newline}" for x in items)
    (txt / "noisy_label_kv.txt").write_text(lines(f"{k} {v}" for k, v in noisy.items()))
    (txt / "clean_label_kv.txt").write_text(lines(f"{k} {v}" for k, v in clean.items()))
    (txt / "noisy_train_key_list.txt").write_text(lines(train))
    (txt / "clean_train_key_list.txt").write_text(lines(clean_only + [train[0], train[3]]))
    (txt / "clean_val_key_list.txt").write_text(lines(val))
    (txt / "clean_test_key_list.txt").write_text(lines(test))
    (txt / "category_names_eng.txt").write_text(lines(CLOTHING1M_CLASSES))
    return {"txt": txt, "sizes": sizes, "noisy": noisy, "clean": clean,
            "splits": {"train": train, "val": val, "test": test}, "clean_only": clean_only}


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


# ---------------------------------------------------------------------------- determinism, atomicity

def test_workers_give_byte_identical_output(tmp_path, capsys):
    src = tmp_path / "clothing1m"
    make_clothing1m(src, annotations=False)
    (src / "images/0/00/12345678.jpg").write_bytes(b"")          # a skipped image too
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        rc, _, err = run(["clothing1m", src, "--out", out, "--resize", "200", "--shard-size", "3",
                          "--workers", workers], capsys)
        assert rc == 0, err
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    assert len([n for n in names if n.endswith(".tar")]) == 6
    for n in names:
        a, b = (outs[0] / n).read_bytes(), (outs[1] / n).read_bytes()
        if n.endswith(".json"):       # the card records the options, --workers and --out among them
            a, b = json.loads(a), json.loads(b)
            for card in (a, b):
                del card["options"]["workers"], card["options"]["out"]
        assert a == b, n
    got = read_back(outs[1], "clothing1m", tmp_path)
    assert len(got["card"]["skipped"]) == 1


def test_a_failure_mid_job_leaves_only_tmp_names(tmp_path, capsys, monkeypatch):
    src = tmp_path / "clothing1m"
    make_clothing1m(src, annotations=False)
    out = tmp_path / "shards"
    per_sample = len(encode_sample("k", b"", "jpg", 0, 0, -1))
    real, calls = pipeline.writer._member, [0]

    def disk_fills(name, data):         # dies inside the second shard's tar
        calls[0] += 1
        if calls[0] > 3 * per_sample + per_sample // 2:
            raise OSError(28, "No space left on device")
        return real(name, data)
    monkeypatch.setattr(pipeline.writer, "_member", disk_fills)
    rc, _, err = run(["clothing1m", src, "--out", out, "--shard-size", "3"], capsys)
    assert_one_line_error(rc, err, "No space left on device")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["clothing1m-000.idx", "clothing1m-000.tar", "clothing1m-001.tar.tmp"]
    # what carries a final name is complete
    tar = out / "clothing1m-000.tar"
    assert len(list(wds.WebDataset([str(tar)], shardshuffle=False))) == 3
    assert len(tar_members(tar)) == 3 * per_sample
    assert (out / "clothing1m-000.idx").read_text() == reference_idx(tar, tmp_path)

    monkeypatch.setattr(pipeline.writer, "_member", real)      # a rerun completes and cleans up
    rc, _, err = run(["clothing1m", src, "--out", out, "--shard-size", "3"], capsys)
    assert rc == 0, err
    assert read_back(out, "clothing1m", tmp_path)["card"]["splits"]["train"]["count"] == 10


@pytest.mark.parametrize("flags", [["--name", "a.b"], ["--resize", "-1"], ["--shard-size", "0"],
                                   ["--val-fraction", "1"], ["--workers", "0"]])
def test_bad_options_exit_2(tmp_path, capsys, flags):
    make_image(tmp_path / "folder" / "a" / "x.jpg")
    with pytest.raises(SystemExit) as e:
        make_shards.main(["imagefolder", str(tmp_path / "folder"), "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_failing_worker_stops_the_pool(tmp_path, capsys, monkeypatch):
    import multiprocessing
    src = tmp_path / "clothing1m"
    truth = make_clothing1m(src, annotations=False)
    bad = make_key(truth["splits"]["train"][4])
    real = pipeline.writer._member

    def fails_on_one_sample(name, data):   # forked workers inherit the patch
        if name.startswith(bad + "."):
            raise OSError(5, "Input/output error")
        return real(name, data)
    monkeypatch.setattr(pipeline.writer, "_member", fails_on_one_sample)
    out = tmp_path / "shards"
    rc, _, err = run(["clothing1m", src, "--out", out, "--shard-size", "1", "--workers", "2"], capsys)
    assert_one_line_error(rc, err, "Input/output error")
    assert multiprocessing.active_children() == []           # no worker left writing shards
    names = {p.name for p in out.iterdir()}
    assert "clothing1m-004.tar.tmp" in names and "clothing1m-004.tar" not in names
    assert not {"clothing1m.json", "clothing1m.parquet"} & names
    for tar in out.glob("*.tar"):                             # whatever has a final name is whole
        assert len(tar_members(tar)) == len(encode_sample("k", b"", "jpg", 0, 0, -1))
        assert tar.with_suffix(".idx").read_text() == reference_idx(tar, tmp_path)


def test_dali_reads_the_shards_with_their_index(tmp_path, capsys):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn
    src = tmp_path / "clothing1m"
    make_clothing1m(src, annotations=False)
    out = tmp_path / "shards"
    rc, _, err = run(["clothing1m", src, "--out", out, "--shard-size", "4"], capsys)
    assert rc == 0, err
    got = read_back(out, "clothing1m", tmp_path)
    files = [s["file"] for s in got["card"]["splits"]["train"]["shards"]]

    @dali.pipeline_def(batch_size=10, num_threads=1, device_id=None, seed=0)
    def pipe():
        images, cls = fn.readers.webdataset(paths=[str(out / f) for f in files],
                                            index_paths=[str(out / (f[:-4] + ".idx")) for f in files],
                                            ext=["jpg", "cls"], missing_component_behavior="error",
                                            random_shuffle=False)
        return images, cls
    p = pipe()
    p.build()
    assert p.epoch_size()["__Webdataset_0"] == 10
    images, cls = p.run()
    assert [bytes(np.asarray(images[i])) for i in range(10)] == [s["data"] for s in got["train"]]
    assert [int(bytes(np.asarray(cls[i]))) for i in range(10)] == [s["cls"] for s in got["train"]]
