"""A card's manifest (NAME.parquet) from a stranger: whatever is wrong with it is one line naming
the file and exit code 2 (pipeline/manifest.py), never an Arrow or numpy traceback, and a
negative index never silently stands for another sample. Before, each case below was a
traceback (ArrowInvalid, FileNotFoundError, IndexError, KeyError) or, for a negative index,
a sample lost at random."""
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import manifest
from pipeline.shards import DataError
from tests.shardkit import make_digit_shards, train_argv
from tests.test_review_inputs import labels_copy, review
from tests.test_trust_runs import one_line
from train.limit import cli as train_cli


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("manifest"), n_train=200, n_test=20)


def cell(column, value):
    """A change to one cell of the manifest, keeping the column's type."""
    def change(path):
        t = pq.read_table(path)
        i = t.schema.get_field_index(column)
        v = t.column(column).to_pylist()
        v[1] = value
        pq.write_table(t.set_column(i, column, pa.array(v, t.schema.field(i).type)), path)
    return change


def retyped(column):
    def change(path):
        t = pq.read_table(path)
        i = t.schema.get_field_index(column)
        pq.write_table(t.set_column(i, column, pa.array([str(v) for v in t.column(column).to_pylist()])), path)
    return change


CASES = {
    "not Parquet": (lambda p: p.write_bytes(b"PAR1 but not really"), "not a readable Parquet file"),
    "missing": (lambda p: p.unlink(), "manifest not found"),
    "a folder": (lambda p: (p.unlink(), p.mkdir()), "not a regular file"),
    "a FIFO": (lambda p: (p.unlink(), os.mkfifo(p)), "not a regular file"),
    "no label column": (lambda p: pq.write_table(pq.read_table(p).drop(["label"]), p), "no column 'label'"),
    "text index": (retyped("index"), "column 'index' has the wrong type"),
    "empty index": (cell("index", None), "column 'index' has 1 empty cells"),
    "empty label": (cell("label", None), "column 'label' has 1 empty cells"),
    "empty split": (cell("split", None), "column 'split' has 1 empty cells"),
    "negative index": (cell("index", -5), "index -5 is negative"),
    "huge index": (cell("index", 10 ** 12), "index 1000000000000 is not below 220, the card's num_indices"),
    "label of no class": (cell("label", 10), "label 10 is not below 10, classes"),
}


def damaged(shards, tmp_path, case):
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    CASES[case][0](data / "digits.parquet")
    return data


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_damaged_manifest_is_one_line_to_the_trainer(shards, tmp_path, capsys, case):
    data = damaged(shards, tmp_path, case)
    assert train_cli(train_argv(data, tmp_path / "run", "--max-train-samples", "50")) == 2
    line = one_line(capsys)
    assert CASES[case][1] in line and "digits.parquet" in line


def test_a_card_without_num_indices_is_one_line(shards, tmp_path, capsys):
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    card = json.loads((data / "digits.json").read_text())
    del card["num_indices"]
    (data / "digits.json").write_text(json.dumps(card))
    assert train_cli(train_argv(data, tmp_path / "run")) == 2
    assert "'num_indices' must be a non-negative integer" in one_line(capsys)


@pytest.mark.parametrize("case", ["not Parquet", "empty index", "negative index"])
def test_the_review_page_reads_sources_through_the_same_checks(shards, tmp_path, capsys, case):
    labels = labels_copy(shards, tmp_path)
    data = damaged(shards, tmp_path, case)
    assert review(data, labels, tmp_path / "page") == 2
    assert CASES[case][1] in one_line(capsys)


def test_batches_are_checked_one_by_one(shards, tmp_path):
    """The batch reader (rank_labels' join, the page's sources) checks each batch as it comes:
    the damage in the second batch stops it there."""
    data = damaged(shards, tmp_path, "negative index")
    path = data / "digits.parquet"
    t = pq.read_table(path)
    pq.write_table(pa.concat_tables([pq.read_table(shards / "digits.parquet").slice(0, 100), t.slice(0, 100)]), path)
    got = manifest.iter_batches(path, ["index", "key"], batch_size=100)
    assert len(next(got)) == 100
    with pytest.raises(DataError, match="index -5"):
        next(got)
    assert manifest.read(shards / "digits.parquet", ["index"], 220).num_rows == 220


def test_dictionary_encoded_strings_are_a_manifest_s_strings(shards, tmp_path):
    """pandas' categoricals write dictionary-encoded string columns; verify_shards takes them,
    and so does everything that reads a manifest (decoded on the way in)."""
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    t = pq.read_table(data / "digits.parquet")
    for c in ("split", "shard", "key"):
        t = t.set_column(t.schema.get_field_index(c), c, t.column(c).dictionary_encode())
    pq.write_table(t, data / "digits.parquet")
    assert pa.types.is_dictionary(pq.read_schema(data / "digits.parquet").field("split").type)
    assert manifest.read(data / "digits.parquet", ["split", "key"], 220).schema.field("split").type == pa.string()
    assert train_cli(train_argv(data, tmp_path / "run", "--max-train-samples", "50")) == 0
