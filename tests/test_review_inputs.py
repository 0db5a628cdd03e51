"""Issue 27 items 3, 6 and 9 on the review side: every CSV the project writes neutralizes cells a
spreadsheet would run (the page's Export CSV too); a received label_scores.parquet or
summary.json of the wrong shape is one line; sizes a file sets are bounded; small flag and
suffix mistakes are caught."""
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import csv_cells
from tests.shardcheck import read_back, run
from tests.shardkit import make_digit_shards
from tests.test_make_shards_tables import make_table_images
from tests.test_review import fake_labels
from tests.test_trust_runs import one_line
from tools import review_labels as rl
from tools.rank_labels import cli as rank_cli
from tools.review.suspects import write_suspects_csv
from train.report import write_summary_csv

ROOT = Path(__file__).resolve().parents[1]
HOSTILE = ["=HYPERLINK(\"http://evil\",\"x\")", "@SUM(1+1)*cmd|' /C calc'!A0", "+1", "-2", "\tx", "'=x"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("inputs"), n_train=200, n_test=20)


def cells(path: Path) -> list[str]:
    return [c for row in csv.reader(path.read_bytes().decode().splitlines()) for c in row]


def test_suspects_and_summary_csv_neutralize_formulas(tmp_path):
    write_suspects_csv(tmp_path / "s.csv", [{"rank": 1, "key": h, "given": h, "predicted": h, "score": -0.5}
                                            for h in HOSTILE])
    write_summary_csv([{"epoch": 0, "note": h, "train_loss": -1.0} for h in HOSTILE], tmp_path / "summary.csv")
    for f in ("s.csv", "summary.csv"):
        got = cells(tmp_path / f)
        assert not [c for c in got if c[:1] in ("=", "+", "@", "\t") or (c[:1] == "-" and not c[1:2].isdigit())], got
        assert all(csv_cells.neutralize(h) in got for h in HOSTILE)


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page's export function")
def test_the_pages_export_csv_neutralizes_the_same_cells():
    js = (ROOT / "tools" / "review" / "assets" / "review.js").read_text()
    neutral = re.search(r"const neutral = .*;", js).group(0)
    probe = HOSTILE + ["plain", "''+x", "a=b", ""]
    out = subprocess.run(["node", "-e", f"{neutral} console.log(JSON.stringify({json.dumps(probe)}.map(neutral)))"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == [csv_cells.neutralize(p) for p in probe]


def labels_copy(shards, tmp_path, table_change=None, summary=None) -> Path:
    labels = fake_labels(shards, tmp_path / "run" / "labels")
    if table_change:
        t = pq.read_table(labels / "label_scores.parquet")
        pq.write_table(table_change(t), labels / "label_scores.parquet")
    if summary is not None:
        (labels / "summary.json").write_text(summary)
    return labels


def review(shards, labels, out, *extra) -> int:
    return rl.cli(["--labels", str(labels), "--out", str(out), "--card", str(shards / "digits.json"), *extra])


def test_ranks_all_one_do_not_fill_the_page(shards, tmp_path):
    def all_one(t):
        return t.set_column(t.schema.get_field_index("rank"), "rank", pa.array([1] * len(t), pa.int64()))
    labels = labels_copy(shards, tmp_path, all_one)
    assert review(shards, labels, tmp_path / "page", "--top", "10") == 0
    html = (tmp_path / "page" / "index.html").read_text()
    rows = json.loads(re.search(r'"rows":(\{.*?\}),"n_scored"', html).group(1))
    assert len(rows["index"]) == 10


@pytest.mark.parametrize("summary, says", [
    ('{"roc_auc": NaN, "n_wrong": 3}', "roc_auc"), ("[1, 2]", "not a JSON object"),
    ('{"roc_auc": "0.9", "n_wrong": 3}', "roc_auc"), ('{"split": ["train"]}', "split"),
])
def test_a_damaged_summary_is_one_line(shards, tmp_path, capsys, summary, says):
    labels = labels_copy(shards, tmp_path, summary=summary)
    assert review(shards, labels, tmp_path / "page") == 2
    assert says in one_line(capsys)


def test_label_scores_of_the_wrong_types_are_one_line(shards, tmp_path, capsys):
    def text_labels(t):
        i = t.schema.get_field_index("label")
        return t.set_column(i, "label", pa.array([str(v) for v in t.column("label").to_pylist()]))
    labels = labels_copy(shards, tmp_path, text_labels)
    assert review(shards, labels, tmp_path / "page") == 2
    assert "'label'" in one_line(capsys)


@pytest.mark.parametrize("column, value, says", [
    ("label", None, "empty values"), ("index", None, "empty values"), ("rank", None, "empty values"),
    ("clean_label", None, "empty values"), ("score", None, "empty values"), ("key", None, "empty values"),
    ("score", float("nan"), "NaN"), ("score", float("inf"), "NaN or infinity"),
])
@pytest.mark.parametrize("command", ["review_labels", "second_round"])
def test_label_scores_with_holes_are_one_line(shards, tmp_path, capsys, column, value, says, command):
    """An empty cell or a NaN score in a received label_scores.parquet: the numeric columns
    became numpy arrays through a zero-copy read that raised ArrowInvalid (a traceback)."""
    from tools import second_round

    def hole(t):
        i = t.schema.get_field_index(column)
        v = t.column(column).to_pylist()
        v[1] = value
        return t.set_column(i, column, pa.array(v, t.schema.field(i).type))
    labels = labels_copy(shards, tmp_path, hole)
    rc = (review(shards, labels, tmp_path / "page") if command == "review_labels"
          else second_round.cli([str(labels), "--out", str(tmp_path / "fixes.csv")]))
    assert rc == 2
    line = one_line(capsys)
    assert says in line and (f"'{column}'" in line)


@pytest.mark.parametrize("flags", [["--top", "-5"], ["--batch-size", "-1"]])
def test_rank_labels_refuses_negative_sizes(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as e:
        rank_cli(["--run", str(tmp_path), "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2 and flags[0] in capsys.readouterr().err


def test_review_thumb_size_is_bounded(shards, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        review(shards, tmp_path / "labels", tmp_path / "page", "--thumb-size", "100000")
    assert e.value.code == 2


def test_an_upper_case_parquet_table_is_read_as_parquet(tmp_path, capsys):
    root = tmp_path / "data"
    paths = make_table_images(root, 6)
    pq.write_table(pa.table({"path": paths, "label": pa.array([i % 2 for i in range(6)], pa.int64())}),
                   root / "T.PARQUET")
    rc, _, err = run(["table", root / "T.PARQUET", "--out", tmp_path / "shards", "--val-fraction", "0"], capsys)
    assert rc == 0, err
    assert read_back(tmp_path / "shards", "table", tmp_path)["card"]["splits"]["train"]["count"] == 6


def test_a_table_error_never_quotes_the_file(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("path,label\na.png,1\nadmin:s3cr3t:1:2\n")
    rc, _, err = run(["table", tmp_path / "t.csv", "--out", tmp_path / "o"], capsys)
    assert rc == 2 and "s3cr3t" not in err and "t.csv" in err


def test_a_class_named_drop_gets_a_distinct_drop_choice():
    from tools.review.label_studio import label_studio_config
    assert '<Choice value="drop"/>' in label_studio_config(["cat", "dog"])
    config = label_studio_config(["cat", "drop"])
    assert '<Choice value="(drop)"/>' in config and config.count('"drop"') == 1
