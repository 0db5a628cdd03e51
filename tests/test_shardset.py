"""A foreign shard whose members carry multi-dot names (`k.seg.png`, legal in WebDataset, whose
key ends at the first dot of the base name) is grouped the same way by the writer's .idx, the
CPU backend, DALI (CPU mode) and verify_shards; the card names no machine's folder; the set's
names and its .idx have one definition (pipeline/shardset.py)."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline import dali, shardset
from pipeline.augment import AugSpec
from pipeline.convert import verify as shard_verify
from pipeline.convert.writer import write_tar
from pipeline.cpu import ReadSpec, cpu_batches
from pipeline.records import encode_sample
from tests.shardkit import make_digit_idx
from tools import make_shards

N = 6


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (28, 28), dtype=np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def multidot(tmp_path):
    """N samples, each led by a foreign `KEY.seg.png` member (webdataset: key KEY, ext seg.png),
    then a later copy of key k0: every reader must name that repeat `k0`, not `k0.seg`."""
    samples = [{f"k{i}.seg.png": png(100 + i), **encode_sample(f"k{i}", png(i), "png", i % 3, i, i % 3)}
               for i in range(N)]
    samples.append({"k0.seg.png": png(99), **encode_sample("k0", png(99), "png", 1, N, 1)})
    tar = tmp_path / "m-000.tar"
    write_tar(tar, samples)
    return tar


def labels_by_index(batches) -> tuple[dict, list]:
    got, skipped = {}, []
    for b in batches:
        images, labels, clean, index, skips = b[:5]
        got.update(zip(index.tolist(), labels.tolist()))
        skipped += [tuple(s)[:2] if not isinstance(s, dict) else (s.get("shard"), s.get("key")) for s in skips]
    return got, skipped


def test_the_idx_keys_a_member_at_the_first_dot(multidot):
    lines = multidot.with_suffix(".idx").read_text().split("\n")
    assert lines[1].split()[0:4:3] == ["seg.png", "k0.seg.png"]         # ext, then the member's name
    res = shard_verify.read_shard(str(multidot), 3)
    assert res["keys"][:N] == [f"k{i}" for i in range(N)]
    assert shard_verify.check_index(multidot, res["keys"]) == []


def test_cpu_backend_groups_by_the_first_dot(multidot):
    spec = ReadSpec(AugSpec(size=28, crop="none", flip=False, channels=1), train=False, batch_size=4)
    got, skipped = labels_by_index(cpu_batches([str(multidot)], spec, 3, 0, 0))
    assert got == {i: i % 3 for i in range(N)}
    assert [k for _, k in skipped] == ["k0"]


@pytest.mark.skipif(not dali.dali_available(), reason="NVIDIA DALI is not installed: pip install '.[dali]'")
def test_dali_reads_it_as_the_cpu_backend_does(multidot):
    spec = ReadSpec(AugSpec(size=28, crop="none", flip=False, channels=1), train=False, batch_size=4)
    cpu = labels_by_index(cpu_batches([str(multidot)], spec, 3, 0, 0))
    got = labels_by_index(dali.dali_batches([str(multidot)], spec, 3, 0, 1))
    assert got[0] == cpu[0] and [k for _, k in got[1]] == [k for _, k in cpu[1]] == ["k0"]


def test_the_card_names_no_folder_and_no_worker_count(tmp_path):
    src = make_digit_idx(tmp_path / "src", n_train=40, n_test=10)
    cards = []
    for out, workers in ((tmp_path / "a", "1"), (tmp_path / "elsewhere" / "b", "2")):
        assert make_shards.main(["mnist", str(src), "--out", str(out), "--name", "d", "--shard-size", "20",
                                 "--workers", workers]) == 0
        cards.append((out / "d.json").read_bytes())
    assert cards[0] == cards[1]
    assert not {"out", "workers"} & set(json.loads(cards[0])["options"])


def test_one_index_parser_strict_for_seeking_lenient_for_reports(multidot):
    text, size = shardset.index_path(multidot).read_text(), multidot.stat().st_size
    strict = shardset.parse_index(text, size)
    assert strict == shardset.parse_index(text, strict=False)
    assert strict.keys() == [f"k{i}" for i in range(N)] + ["k0"] and strict.end <= size
    with pytest.raises(ValueError, match="past the end"):      # a reader must not seek by it
        shardset.parse_index(text, strict.end - 1)
    assert shardset.parse_index(text, strict.end - 1, strict=False).end == strict.end   # verify says so
    with pytest.raises(ValueError, match="header says"):
        shardset.parse_index(text.replace(f"v1.2 {N + 1}", "v1.2 99"), size)
    old = shardset.parse_index("v1.1 1\njpg 512 10 cls 1536 1\n", strict=False)     # DALI's older format
    assert (old.keys(), old.end, old.samples[0][1]) == (None, 1537, ("cls", 1536, 1, ""))
    with pytest.raises(ValueError):
        shardset.parse_index("v1.1 1\njpg 512 10 cls 1536 1\n", 4096)


def test_shard_file_names_are_built_and_matched_once():
    assert [shardset.shard_file("d", s, 7) for s in ("train", "val", "test")] == ["d-007.tar", "d-val-007.tar",
                                                                                  "d-test-007.tar"]
    assert shardset.renumbered("d-val-007.tar", 2) == "d-val-002.tar"
    assert [shardset.dataset_of(f) for f in ("d-x-000.tar", "d-test-1234.tar", "d-00.tar", "d-000.idx")] == \
        ["d-x", "d", None, None]
    assert shardset.is_shard_of("d-val-000.tar", "d") and not shardset.is_shard_of("dd-000.tar", "d")
    assert shardset.index_path("a/d-000.tar") == "a/d-000.idx"
