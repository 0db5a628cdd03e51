"""The reproduction runner: one CSV row per cell, FW after its CE run, resumable."""
import csv

from tests.shardkit import make_digit_shards
from tools.reproduce import main


def test_grid_rows_and_resume(tmp_path, capsys):
    shards = make_digit_shards(tmp_path / "d", n_train=500, n_test=100)
    argv = ["--shards", str(shards), "--methods", "limit_l-s,fw", "--p", "0.5", "--n", "300",
            "--seeds", "0", "--runs", str(tmp_path / "runs"), "--csv", str(tmp_path / "r.csv"), "--max-epochs", "1"]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert sorted(r["method"] for r in rows) == ["ce", "fw", "limit_l-s"]      # CE first, for FW
    assert all(0 <= float(r["test_acc"]) <= 1 and r["auc"] for r in rows)
    assert main(argv) == 0                                                     # nothing left to do
    assert len(list(csv.DictReader(open(tmp_path / "r.csv")))) == 3
    # the report modes read what the grid wrote: a table line per cell, beside the paper's number
    capsys.readouterr()
    assert main(["--csv", str(tmp_path / "r.csv"), "--table"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 + 3 and lines[2].startswith("| 0.5 | 300 | ce | 1 |") and lines[2].endswith("| - |")
    fig = tmp_path / "fig2.png"
    assert main(["--runs", str(tmp_path / "runs"), "--methods", "ce,limit_l-s", "--p", "0.5", "--n", "300",
                 "--seeds", "0", "--figure", str(fig)]) == 0
    assert fig.stat().st_size > 10_000


def test_paper_numbers_are_tables_4_and_5():
    from tools.reproduce import paper
    assert paper("limit_l-s", 0.8, 10000) == "0.939" and paper("ce", 0.8, 10000) == "0.699"
    assert paper("gce", 0.8, 10000) == "-" and paper("ce", 0.8, 300) == "-"


def test_cell_recipes():
    from pathlib import Path

    from tools.reproduce import cell_args

    def flag(args, name):                         # the last occurrence wins, as in argparse
        return args[len(args) - 1 - args[::-1].index(name) + 1]
    d = Path("d")
    lim8, lim0 = (cell_args("limit_l-s", p, 10000, 0, d, d, d) for p in (0.8, 0.0))
    assert flag(lim8, "--beta") == "10.0" and flag(lim0, "--beta") == "10.0" and "--model-ema" in lim8
    assert flag(lim8, "--batch-size") == "64" and flag(lim8, "--augment") == "pad:2"         # the 60-epoch recipe
    assert flag(cell_args("ce", 0.8, 10000, 0, d, d, d), "--batch-size") == "256"
    assert flag(lim8, "--epochs") == "60" and flag(cell_args("ce", 0.8, 10000, 0, d, d, d), "--epochs") == "60"
    dmi = cell_args("dmi", 0.8, 10000, 1, d, d, Path("ce-run"))
    assert flag(dmi, "--init-from") == "ce-run" and flag(dmi, "--epochs") == "15" and flag(dmi, "--lr") == "1e-4"
    capped = cell_args("limit_l-s", 0.0, 10000, 0, d, d, d, max_epochs=60, extra=["--beta", "3"])
    assert flag(capped, "--epochs") == "60" and flag(capped, "--beta") == "3"
