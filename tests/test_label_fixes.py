"""--label-fixes: a reviewer's decisions change the labels a run trains on (after --noise),
drop samples from training, are counted in config.json and final.json, and reach
rank_labels; a bad fixes file is one line and exit code 2."""
import json

import pyarrow.parquet as pq
import pytest

from tests.shardkit import make_digit_shards, train_argv
from tools.rank_labels import cli as rank_cli
from train import runfolder
from train.limit import cli


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("fixes"), n_train=300, n_test=100, shard_size=100)


argv = train_argv


@pytest.fixture(scope="module")
def manifest(shards):
    t = pq.read_table(shards / "digits.parquet").to_pylist()
    return [r for r in t if r["split"] == "train"]


def test_fixes_relabel_and_drop_and_are_counted(shards, manifest, tmp_path):
    rows = manifest[:5]
    new = [(r["label"] + 1) % 10 for r in rows[:3]]
    fixes = tmp_path / "decisions.csv"
    fixes.write_text("key,label\n" + "".join(f"{r['key']},{n}\n" for r, n in zip(rows[:3], new))
                     + "".join(f"{r['key']},drop\n" for r in rows[3:5]))
    out = tmp_path / "r"
    assert cli(argv(shards, out, "--label-fixes", str(fixes))) == 0
    applied = json.loads((out / "config.json").read_text())["label_fixes_applied"]
    assert applied["relabelled"] == 3 and applied["dropped"] == 2 and len(applied["sha256"]) == 64
    assert json.loads((out / "final.json").read_text())["label_fixes_applied"] == applied
    assert runfolder.read_jsonl(out / "metrics.jsonl")[0]["samples_seen"] == len(manifest) - 2
    assert rank_cli(["--run", str(out), "--out", str(tmp_path / "labels"), "--workers", "0"]) == 0
    scored = {r["index"]: r["label"] for r in pq.read_table(tmp_path / "labels" / "label_scores.parquet").to_pylist()}
    assert [scored[r["index"]] for r in rows[:3]] == new                 # the fixed labels were trained on
    assert not any(r["index"] in scored for r in rows[3:5])              # dropped: not in the train split


def test_fixes_apply_after_noise(shards, manifest, tmp_path):
    r = manifest[0]
    fixes = tmp_path / "f.csv"
    fixes.write_text(f"index,label\n{r['index']},{r['label']}\n")       # a reviewer restores the true label
    out = tmp_path / "r"
    assert cli(argv(shards, out, "--noise", "uniform:1.0", "--label-fixes", str(fixes))) == 0
    assert rank_cli(["--run", str(out), "--out", str(tmp_path / "labels"), "--workers", "0"]) == 0
    scored = {x["index"]: (x["label"], x["clean_label"]) for x in pq.read_table(tmp_path / "labels" / "label_scores.parquet").to_pylist()}
    assert scored[r["index"]][0] == r["label"]                          # the fix wins over the noise
    assert sum(lab != clean for lab, clean in scored.values()) == len(scored) - 1


@pytest.mark.parametrize("text, says", [("key,label\nno-such-key,3\n", "unknown key"),
                                        ("index,label\n0,11\n", "row"),
                                        ("index,label\n0,3\n0,4\n", "row")])
def test_a_bad_fixes_file_is_one_line(shards, tmp_path, capsys, text, says):
    fixes = tmp_path / "bad.csv"
    fixes.write_text(text)
    assert cli(argv(shards, tmp_path / "r", "--label-fixes", str(fixes))) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(err) == 1 and "--label-fixes" in err[0] and "bad.csv" in err[0] and says in err[0], err
