"""Shards damaged in ways the readers used to crash on or train twice: a json index of null,
an index outside [0, num_indices), a tar header declaring a 1 TiB member, a sample repeated in
another shard, a 16-bit PNG, a pixel bomb. Each is skipped, counted and named by the CPU
backend (and by the DALI backend's index scan and batch filter, tested here without DALI),
and listed by tools/verify_shards.py, never a traceback."""
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import augment, dali, records
from pipeline.cpu import ReadSpec, cpu_batches
from tests import hostile
from tests.shardkit import make_digit_shards
from tools import verify_shards
from train.limit import cli

THREE = ["digits-000.tar", "digits-001.tar", "digits-002.tar"]     # 72 samples
N_INDICES = 190                                                     # 120 train + 30 val + 40 test


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """5 train shards of 24 digits (PNG), 2 val, 2 test."""
    return make_digit_shards(tmp_path_factory.mktemp("small"), n_train=150, n_test=40, shard_size=24)


@pytest.fixture
def folder(small, tmp_path):
    return hostile.copy_set(small, tmp_path / "shards")


def read(folder, workers=0, shards=THREE):
    """-> (index list, skip records, {index: uint8 image}) of one eval pass."""
    spec = ReadSpec(augment.AugSpec(size=28, crop="none", flip=False, channels=1), train=False, batch_size=8)
    batches = list(cpu_batches([str(folder / s) for s in shards], spec, 10, 0, workers))
    index = [i for b in batches for i in b[3].tolist()]
    images = {i: img for b in batches for i, img in zip(b[3].tolist(), b[0])}
    return index, [tuple(r) for b in batches for r in b[4]], images


def one_record(records_, shard, key, needle):
    assert len(records_) == 1, records_
    s, k, reason = records_[0]
    assert Path(s).name == shard and k == key and needle in reason, records_[0]


def verify_lists(folder, *needles, capsys):
    assert verify_shards.main([str(folder), "--name", "digits", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)


# ---------------------------------------------------------------- metadata
def test_a_json_index_of_null_is_a_named_skip(folder, capsys):
    key = hostile.set_meta(folder, "digits-001.tar", 3, drop_ids=True, json_index=None)
    index, recs, _ = read(folder)
    assert len(index) == 71
    one_record(recs, "digits-001.tar", key, "json index is 'None', not an integer")
    verify_lists(folder, key, "no readable ids or json member", capsys=capsys)


@pytest.mark.parametrize("bad", [-1, N_INDICES, 10**12])
def test_an_index_outside_the_cards_range_is_a_named_skip(folder, bad, capsys):
    key = hostile.set_meta(folder, "digits-001.tar", 3, index=bad)
    index, recs, _ = read(folder)
    assert len(index) == 71 and bad not in index
    one_record(recs, "digits-001.tar", key, f"index {bad} outside [0, {N_INDICES})")
    verify_lists(folder, key, f"outside [0, {N_INDICES})", capsys=capsys)


def test_a_huge_json_index_without_ids_is_a_named_skip(folder):
    key = hostile.set_meta(folder, "digits-001.tar", 3, drop_ids=True, json_index=10**30)
    index, recs, _ = read(folder)
    assert len(index) == 71
    one_record(recs, "digits-001.tar", key, "outside [0, 190)")


def test_a_json_member_that_is_not_an_object_is_a_named_skip(folder):
    key = hostile.set_meta(folder, "digits-001.tar", 3, drop_ids=True)
    path = folder / "digits-001.tar"
    samples = hostile.read_shard(path)
    samples[3][f"{key}.json"] = b"[" * 100000
    hostile.write_tar(path, samples)
    index, recs, _ = read(folder)
    assert len(index) == 71
    one_record(recs, "digits-001.tar", key, "ValueError")


# ---------------------------------------------------------------- a member of 1 TiB
def test_a_header_declaring_a_huge_member_ends_the_shard_with_a_record(folder, capsys):
    hostile.declare_huge(folder, "digits-001.tar", 5)
    index, recs, _ = read(folder)
    assert len(index) == 24 + 5 + 24
    one_record(recs, "digits-001.tar", "", "above the 256 MiB limit")
    assert "after 5 samples of 24" in recs[0][2]
    verify_lists(folder, "digits-001.tar: cut off or unreadable after 5 samples", "256 MiB", capsys=capsys)


# ---------------------------------------------------------------- repeats across shards
@pytest.mark.parametrize("workers", [0, 2])
def test_a_sample_repeated_in_another_shard_is_read_once(folder, workers, capsys):
    """The copy the manifest does not place is the repeat, whichever worker reads it first."""
    key = hostile.repeat_in(folder, "digits-000.tar", 2, "digits-002.tar")
    index, recs, _ = read(folder, workers)
    assert len(index) == 72 and len(set(index)) == 72
    one_record(recs, "digits-002.tar", key, "duplicate: the manifest puts index")
    assert "digits-000.tar" in recs[0][2]
    verify_lists(folder, f"key {key} appears 2 times", capsys=capsys)


def test_a_repeat_without_a_manifest_is_read_once(folder):
    (folder / "digits.parquet").unlink()
    key = hostile.repeat_in(folder, "digits-000.tar", 2, "digits-002.tar")
    index, recs, _ = read(folder)
    assert len(index) == 72 and len(set(index)) == 72
    one_record(recs, "digits-002.tar", key, "duplicate index")


def test_verify_names_an_index_two_keys_share_and_one_too_big_for_64_bits(folder, capsys):
    owner = hostile.read_shard(folder / "digits-000.tar")[0]
    taken = int(np.frombuffer(owner[f"{hostile.key_of(owner)}.ids"], dtype="<i8")[1])
    key = hostile.set_meta(folder, "digits-001.tar", 3, index=taken)
    huge = hostile.set_meta(folder, "digits-002.tar", 5, drop_ids=True, json_index=10**30)
    verify_lists(folder, f"digits-001.tar: {key}: index {taken} also used by {hostile.key_of(owner)}",
                 f"digits-002.tar: {huge}: index {10**30} does not fit in 64 bits", capsys=capsys)


def test_verify_compares_the_manifest_key_by_key(folder, capsys):
    """A key listed twice, one no tar holds, a tar sample the manifest lacks: each named."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pq.read_table(folder / "digits.parquet")
    keys = t.column("key").to_pylist()
    ghost = t.slice(0, 1).set_column(0, "key", pa.array(["ghost-key"]))
    t = pa.concat_tables([t.slice(0, 1), t.slice(0, 1), ghost, t.slice(2)])   # row 0 twice, row 1 gone
    pq.write_table(t, folder / "digits.parquet")
    verify_lists(folder, f"manifest: key {keys[0]} listed twice", "are in no tar: ghost-key",
                 f"{keys[1]} is not in the manifest", capsys=capsys)


def test_verify_aligns_a_manifest_in_another_order_key_by_key(folder, capsys):
    """The manifest is compared by key, not by row: reversed it still agrees, and one changed
    label in the reversed file names that key and no other."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pq.read_table(folder / "digits.parquet")
    t = t.take(pa.array(range(len(t) - 1, -1, -1)))
    pq.write_table(t, folder / "digits.parquet")
    assert verify_shards.main([str(folder), "--name", "digits", "--workers", "1"]) == 0
    capsys.readouterr()
    labels = t.column("label").to_pylist()
    labels[3] = (labels[3] + 1) % 10
    pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", pa.array(labels, pa.int64())),
                   folder / "digits.parquet")
    verify_lists(folder, f"{t.column('key')[3].as_py()}: tar has (split, shard, label, index, clean)", capsys=capsys)
    problems, _ = verify_shards.verify(folder, "digits")
    assert sum("tar has" in p for p in problems) == 1


def test_verify_names_a_manifest_column_of_the_wrong_type_and_keyless_rows(folder, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    t = pq.read_table(folder / "digits.parquet")
    i = t.schema.get_field_index("key")
    pq.write_table(t.set_column(i, "key", pa.array([None] + t.column("key").to_pylist()[1:], pa.string())),
                   folder / "digits.parquet")
    verify_lists(folder, "manifest: 1 row(s) without a key", "is not in the manifest", capsys=capsys)
    i = t.schema.get_field_index("label")
    pq.write_table(t.set_column(i, "label", pa.array(["cat"] * len(t))), folder / "digits.parquet")
    verify_lists(folder, "manifest: column label is string, not int64", capsys=capsys)


# ---------------------------------------------------------------- 16-bit PNGs, pixel bombs
def png16(side: int = 28) -> tuple[bytes, np.ndarray]:
    """A real 16-bit greyscale PNG ramp and its 8-bit truth."""
    ramp = np.linspace(0, 65535, side).round().astype(np.uint16)
    arr = np.tile(ramp, (side, 1))
    buf = io.BytesIO()
    Image.frombytes("I;16", (side, side), arr.astype("<u2").tobytes()).save(buf, format="PNG")
    assert buf.getvalue()[24] == 16
    return buf.getvalue(), ((arr.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)


def bomb_png(side: int = 9000) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 7).save(buf, format="PNG")
    return buf.getvalue()


def test_a_16_bit_png_in_a_shard_decodes_to_the_right_values(folder):
    data, truth = png16()
    hostile.replace_image(folder, "digits-001.tar", 3, data)
    index, recs, images = read(folder)
    assert len(index) == 72 and not recs
    img = images[24 + 3].numpy()[0]                     # digits-001's 4th sample: index 27
    assert np.abs(img.astype(int) - truth).max() <= 1 and 120 < img.mean() < 135


def test_a_pixel_bomb_in_a_shard_is_skipped_before_decoding(folder):
    key = hostile.replace_image(folder, "digits-001.tar", 3, bomb_png())
    t0 = time.perf_counter()
    index, recs, _ = read(folder)
    assert time.perf_counter() - t0 < 3                 # a decode of it alone takes ~1 s
    assert len(index) == 71
    one_record(recs, "digits-001.tar", key, "9000x9000 = 81000000 pixels, above the limit")


def test_image_header_reads_png_and_jpeg_sizes():
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.new("RGB", (37, 21)).save(buf, format=fmt)
        assert records.image_header(buf.getvalue()) == (37, 21, 8)
    assert records.image_header(b"GIF89a...") is None


def test_dali_index_scan_skips_bombs_and_16_bit_pngs(folder):
    """What DALI would decode (white 16-bit greys, 2 GB bombs) is dropped with a record by the
    index scan, which needs no DALI."""
    bomb_key = hostile.replace_image(folder, "digits-001.tar", 3, bomb_png())
    wide_key = hostile.replace_image(folder, "digits-001.tar", 7, png16()[0])
    path = str(folder / "digits-001.tar")
    scan = dali._scan_index(path, (folder / "digits-001.tar").stat().st_mtime)
    reasons = {k: r for _, k, r in scan.skips}
    assert set(reasons) == {bomb_key, wide_key}
    assert "81000000 pixels" in reasons[bomb_key] and "16-bit" in reasons[wide_key]
    assert len(scan.drops) == 2 and scan.usable == 22


def _fake_dali_batch(index: list[int], shard: str) -> dict:
    n = len(index)
    ids = torch.tensor([[1, i, 1] for i in index], dtype=torch.int64)
    src = [f"{shard}:{1000 + j}:k{j}.png".encode() for j in range(n)]
    width = max(map(len, src))
    return {"images": torch.zeros(n, 1, 28, 28, dtype=torch.uint8), "ids": ids,
            "cls": torch.full((n, 1), ord("1"), dtype=torch.uint8),
            "source": torch.tensor([list(s.ljust(width, b"\0")) for s in src], dtype=torch.uint8)}


def test_dali_batch_filter_skips_indices_out_of_range_and_repeats():
    skips, seen = [], dali.SeenIndices(N_INDICES)
    out = dali._parse(_fake_dali_batch([3, -1, N_INDICES, 5, 3], "/s/digits-001.tar"), 10, None, skips,
                      seen=seen)
    assert out[3].tolist() == [3, 5]
    reasons = sorted((k, r) for _, k, r in skips)
    assert [k for k, _ in reasons] == ["k1", "k2", "k4"]
    assert f"index -1 outside [0, {N_INDICES})" in reasons[0][1] and "duplicate index 3" in reasons[2][1]
    out = dali._parse(_fake_dali_batch([5, 7], "/s/digits-002.tar"), 10, None, skips, seen=seen)
    assert out[3].tolist() == [7]                       # the repeat of an earlier batch's 5


# ---------------------------------------------------------------- training
def test_training_over_all_of_them_names_every_skip(folder, tmp_path, capsys):
    keys = [hostile.set_meta(folder, "digits-001.tar", 3, drop_ids=True, json_index=None),
            hostile.set_meta(folder, "digits-001.tar", 4, index=-1),
            hostile.replace_image(folder, "digits-001.tar", 6, bomb_png()),
            hostile.repeat_in(folder, "digits-000.tar", 2, "digits-002.tar")]
    hostile.declare_huge(folder, "digits-003.tar", 20)
    out = tmp_path / "run"
    rc = cli(["--data", str(folder), "--model", "mnist_cnn", "--epochs", "1", "--batch-size", "32",
              "--workers", "0", "--out", str(out), "--max-skip-frac", "0.2"])
    assert rc == 0, capsys.readouterr().err
    assert "Traceback" not in capsys.readouterr().err
    recs = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["key"] for r in recs) == sorted(keys + [""])
    final = json.loads((out / "final.json").read_text())
    assert final["samples_skipped"] == 4


def test_verify_shards_names_bombs_without_decoding_them_and_16_bit_pngs(folder, capsys):
    bomb_key = hostile.replace_image(folder, "digits-001.tar", 3, bomb_png())
    wide_key = hostile.replace_image(folder, "digits-001.tar", 7, png16()[0])
    t0 = time.perf_counter()
    verify_lists(folder, f"digits-001.tar: {bomb_key}: image 9000x9000 = 81000000 pixels, above the limit",
                 f"digits-001.tar: {wide_key}: 16-bit PNG", capsys=capsys)
    assert time.perf_counter() - t0 < 3
