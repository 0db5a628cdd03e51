"""make_shards on inputs a careless user or a stranger hands over: re-conversion into a used
--out, 16-bit PNGs, pixel bombs, non-ASCII and colliding names, hidden entries, symlinks,
tables with numeric paths or no readable image. Each case ends in a converted set that reads
back whole, or in one line and exit code 2."""
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import make_image
from pipeline import records
from tests.shardcheck import assert_one_line_error, read_back, run
from tools import verify_shards


def folder_of(root: Path, classes=("a", "b"), n=3) -> Path:
    for c in classes:
        for i in range(n):
            make_image(root / c / f"{c}{i}.png", size=(20 + i, 16), seed=i)
    return root


# ---------------------------------------------------------------- re-conversion into one --out
def test_reconverting_into_the_same_out_leaves_no_stale_shard(tmp_path, capsys):
    src = folder_of(tmp_path / "src", n=5)
    out = tmp_path / "out"
    (out).mkdir()
    (out / "other-000.tar").write_bytes(b"not ours")          # another dataset's name: kept
    rc, _, err = run(["imagefolder", src, "--out", out, "--name", "d", "--shard-size", "2",
                      "--val-fraction", "0.2"], capsys)
    assert rc == 0, err
    assert len(list(out.glob("d-0*.tar"))) == 4 and list(out.glob("d-val-*.tar"))
    rc, _, err = run(["imagefolder", src, "--out", out, "--name", "d", "--shard-size", "6"], capsys)
    assert rc == 0, err
    card = json.loads((out / "d.json").read_text())            # no tar or idx the card does not list
    assert card["splits"]["train"]["count"] == 10 and "val" not in card["splits"]
    assert sorted(p.name for p in out.glob("d-*")) == ["d-000.idx", "d-000.tar", "d-001.idx", "d-001.tar"]
    assert (out / "other-000.tar").read_bytes() == b"not ours"
    assert "removed 3 shard(s) of an older conversion" in err
    assert not verify_shards.verify(out, "d")[0]


def test_reconverting_keeps_shards_another_card_lists(tmp_path, capsys):
    """A dataset named d-val has train shards d-val-000.tar: d's val pattern, not d's."""
    src = folder_of(tmp_path / "src", n=2)
    out = tmp_path / "out"
    for name in ("d-val", "d", "d"):
        rc, _, err = run(["imagefolder", src, "--out", out, "--name", name], capsys)
        assert rc == 0, err
    assert not verify_shards.verify(out, "d-val")[0] and not verify_shards.verify(out, "d")[0]
    assert "removed" not in err


# ---------------------------------------------------------------- 16-bit images
def gradient16(path: Path, mode: str = "I;16") -> np.ndarray:
    """A real 16-bit PNG: a horizontal ramp over the whole 16-bit range; -> the 8-bit truth."""
    ramp = np.linspace(0, 65535, 64).round().astype(np.uint16)
    arr = np.tile(ramp, (16, 1))
    if mode == "I;16":
        Image.frombytes("I;16", arr.shape[::-1], arr.astype("<u2").tobytes()).save(path)
    else:                                       # 16-bit RGB: PIL cannot write it, write raw PNG
        _write_png16_rgb(path, np.stack([arr] * 3, -1))
    assert path.read_bytes()[24] == 16          # the IHDR bit depth
    return ((arr.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def _write_png16_rgb(path: Path, rgb: np.ndarray) -> None:
    import struct
    import zlib
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + rgb[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("mode", ["I;16", "RGB16"])
def test_16_bit_pngs_are_stored_as_8_bit_with_the_right_values(tmp_path, capsys, mode):
    root = tmp_path / "src"
    (root / "a").mkdir(parents=True)
    truth = gradient16(root / "a" / "ramp.png", mode)
    make_image(root / "b" / "x.png")
    out = tmp_path / "out"
    rc, _, err = run(["imagefolder", root, "--out", out, "--name", "d"], capsys)
    assert rc == 0, err
    got = read_back(out, "d", tmp_path)
    ramp = next(s for s in got["train"] if s["key"] == "a_ramp")
    assert ramp["data"][24] == 8                                # an 8-bit PNG now
    img = np.asarray(Image.open(io.BytesIO(ramp["data"])).convert("L"))
    assert np.abs(img.astype(int) - truth).max() <= 1 and 120 < img.mean() < 135


# ---------------------------------------------------------------- pixel bombs
def bomb(path: Path, side: int = 9000) -> Path:
    """A large flat PNG: a few hundred KB on disk, side x side pixels when decoded."""
    Image.new("L", (side, side), 7).save(path, optimize=False)
    return path


def test_pixel_bombs_are_skipped_and_listed_in_the_card(tmp_path, capsys):
    assert 9000 * 9000 > records.MAX_PIXELS
    root = folder_of(tmp_path / "src", n=2)
    bomb(root / "a" / "huge.png")
    out = tmp_path / "out"
    rc, _, err = run(["imagefolder", root, "--out", out, "--name", "d"], capsys)
    assert rc == 0, err
    got = read_back(out, "d", tmp_path)
    assert "a_huge" not in {s["key"] for s in got["train"]}
    (skip,) = got["card"]["skipped"]
    assert skip["key"] == "a_huge" and "81000000 pixels" in skip["reason"]
    assert f"{records.MAX_PIXELS}" in skip["reason"]


def test_pixel_bombs_are_downscaled_with_resize(tmp_path, capsys):
    root = folder_of(tmp_path / "src", n=2)
    bomb(root / "a" / "huge.png")
    out = tmp_path / "out"
    rc, _, err = run(["imagefolder", root, "--out", out, "--name", "d", "--resize", "64"], capsys)
    assert rc == 0, err
    got = read_back(out, "d", tmp_path)
    huge = next(s for s in got["train"] if s["key"] == "a_huge")
    assert huge["image"].size == (64, 64) and not got["card"]["skipped"]


# ---------------------------------------------------------------- names
def test_non_ascii_names_keep_their_letters(tmp_path, capsys):
    root = tmp_path / "src"
    make_image(root / "猫" / "写真.jpg", seed=1)
    make_image(root / "犬" / "写真.jpg", seed=2)
    make_image(root / "犬" / "café.png", seed=3)
    out = tmp_path / "out"
    rc, _, err = run(["imagefolder", root, "--out", out, "--name", "d"], capsys)
    assert rc == 0, err
    got = read_back(out, "d", tmp_path)
    assert got["card"]["classes"] == ["犬", "猫"]
    assert sorted(s["key"] for s in got["train"]) == ["犬_café", "犬_写真", "猫_写真"]


def test_decomposed_and_composed_unicode_give_one_key():
    assert records.make_key("caf\u00e9.jpg") == records.make_key("cafe\u0301.jpg") == "caf\u00e9"


def test_a_name_with_no_letters_gets_a_stable_hashed_key():
    key = records.make_key("!!!.jpg")
    assert key and key == records.make_key("!!!.jpg") and key != records.make_key("???.jpg")
    assert "." not in key and "/" not in key


def test_a_real_collision_names_both_files(tmp_path, capsys):
    root = tmp_path / "src"
    make_image(root / "a" / "x.jpg")
    make_image(root / "a" / "x.png")
    rc, _, err = run(["imagefolder", root, "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "duplicate key 'a_x'", "x.jpg", "x.png")


def test_symlink_loops_and_dangling_links_are_listed_as_skipped(tmp_path, capsys):
    root = folder_of(tmp_path / "src", n=2)
    os.symlink(root / "a" / "gone.png", root / "a" / "dangling.png")
    os.symlink(root / "a" / "loop.png", root / "a" / "loop.png")
    out = tmp_path / "out"
    rc, _, err = run(["imagefolder", root, "--out", out, "--name", "d"], capsys)
    assert rc == 0, err
    got = read_back(out, "d", tmp_path)
    assert got["card"]["splits"]["train"]["count"] == 4
    reasons = {s["key"]: s["reason"] for s in got["card"]["skipped"]}
    assert set(reasons) == {"a_dangling", "a_loop"}
    assert "dangling" in reasons["a_dangling"] and "loop" in reasons["a_loop"]


def test_hidden_entries_are_not_classes_and_empty_classes_are_named(tmp_path, capsys):
    root = folder_of(tmp_path / "src", n=2)
    make_image(root / ".ipynb_checkpoints" / "a0-checkpoint.png")
    make_image(root / "a" / ".ipynb_checkpoints" / "a0-checkpoint.png")
    make_image(root / "a" / "._a0.png")                       # macOS AppleDouble file
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "empty").mkdir()
    out = tmp_path / "out"
    rc, _, err = run(["imagefolder", root, "--out", out, "--name", "d"], capsys)
    assert rc == 0, err
    got = read_back(out, "d", tmp_path)
    assert got["card"]["classes"] == ["a", "b", "empty"]
    assert sorted(s["key"] for s in got["train"]) == ["a_a0", "a_a1", "b_b0", "b_b1"]
    assert "class folder 'empty' holds no images" in err


# ---------------------------------------------------------------- tables
def test_a_numeric_path_column_in_parquet_is_one_line(tmp_path, capsys):
    pq.write_table(pa.table({"path": [1, 2], "label": [0, 1]}), tmp_path / "t.parquet")
    rc, _, err = run(["table", tmp_path / "t.parquet", "--out", tmp_path / "o"], capsys)
    assert_one_line_error(rc, err, "column 'path'", "int64")


def test_a_csv_of_numeric_file_names_reads_them_as_text(tmp_path, capsys):
    for i, name in enumerate(["0001", "0002", "0003"]):
        make_image(tmp_path / name, fmt="PNG", seed=i)
    (tmp_path / "t.csv").write_text("path,label\n0001,0\n0002,1\n0003,0\n")
    out = tmp_path / "o"
    rc, _, err = run(["table", tmp_path / "t.csv", "--out", out, "--name", "t"], capsys)
    assert rc == 0, err
    assert sorted(s["key"] for s in read_back(out, "t", tmp_path)["train"]) == ["0001", "0002", "0003"]


def test_a_table_whose_every_image_is_missing_converts_nothing_and_says_so(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("path,label\nnope1.jpg,0\nnope2.jpg,1\n")
    out = tmp_path / "o"
    rc, _, err = run(["table", tmp_path / "t.csv", "--out", out, "--name", "t"], capsys)
    assert_one_line_error(rc, err, "no image converted", "2 skipped", "nope1.jpg")
    assert not (out / "t.json").exists() and not list(out.glob("*.tar"))


def test_a_long_name_gets_a_shortened_key_that_fits_a_tar_header(tmp_path, capsys):
    root = tmp_path / "src"
    long = "写真" * 20 + ".jpg"                              # 120 bytes of UTF-8: over ustar's 100
    make_image(root / "猫" / long, seed=1)
    make_image(root / "猫" / ("写真" * 20 + "x.jpg"), seed=2)
    out = tmp_path / "out"
    rc, _, err = run(["imagefolder", root, "--out", out, "--name", "d"], capsys)
    assert rc == 0, err
    keys = [s["key"] for s in read_back(out, "d", tmp_path)["train"]]
    assert len(set(keys)) == 2 and all(len(k.encode()) <= records.MAX_KEY_BYTES for k in keys)
    assert all(k.startswith("猫_写真写真") for k in keys)
    assert records.make_key("a" * 200 + ".jpg") == records.make_key("a" * 200 + ".jpg")
