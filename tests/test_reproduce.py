"""The reproduction runner: one CSV row per cell, FW after its CE run, resumable."""
import csv

from tests.shardkit import make_digit_shards
from tools.reproduce import main


def test_grid_rows_and_resume(tmp_path):
    shards = make_digit_shards(tmp_path / "d", n_train=500, n_test=100)
    argv = ["--shards", str(shards), "--methods", "limit_l-s,fw", "--p", "0.5", "--n", "300",
            "--seeds", "0", "--runs", str(tmp_path / "runs"), "--csv", str(tmp_path / "r.csv"), "--max-epochs", "1"]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert sorted(r["method"] for r in rows) == ["ce", "fw", "limit_l-s"]      # CE first, for FW
    assert all(0 <= float(r["test_acc"]) <= 1 and r["auc"] for r in rows)
    assert main(argv) == 0                                                     # nothing left to do
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 3
