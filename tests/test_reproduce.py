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
    assert flag(lim8, "--beta") == "5.0" and flag(lim0, "--beta") == "5.0" and "--model-ema" in lim8
    assert flag(lim8, "--batch-size") == "64" and flag(lim8, "--augment") == "pad:2"         # the 60-epoch recipe
    assert flag(cell_args("ce", 0.8, 10000, 0, d, d, d), "--batch-size") == "256"
    assert flag(lim8, "--epochs") == "60" and flag(cell_args("ce", 0.8, 10000, 0, d, d, d), "--epochs") == "60"
    dmi = cell_args("dmi", 0.8, 10000, 1, d, d, Path("ce-run"))
    assert flag(dmi, "--init-from") == "ce-run" and flag(dmi, "--epochs") == "15" and flag(dmi, "--lr") == "1e-4"
    capped = cell_args("limit_l-s", 0.0, 10000, 0, d, d, d, max_epochs=60, extra=["--beta", "3"])
    assert flag(capped, "--epochs") == "60" and flag(capped, "--beta") == "3"


def test_init_cell_starts_its_predictor_from_a_short_ce_run(tmp_path):
    """limit_l-s+init: a CE run of the predictor's backbone first (its epochs taken from the
    cell's budget), then LIMIT with --init-from it; one CSV row, the CE run reused on resume."""
    import json
    from pathlib import Path

    from tools.reproduce import cell_args, paper, warmup_args
    d = Path("d")
    run = Path("runs/limit_l-s+init-p0.8-n10000-s1")
    lim = cell_args("limit_l-s+init", 0.8, 10000, 1, d, run, d)
    warm = warmup_args("limit_l-s+init", 0.8, 10000, 1, d, run)
    last = lambda args, name: args[len(args) - 1 - args[::-1].index(name) + 1]  # noqa: E731
    assert last(lim, "--init-from") == "runs/ce2bn-p0.8-n10000-s1" and last(lim, "--init-target") == "predictor"
    assert last(lim, "--epochs") == "58" and last(lim, "--batch-size") == "64"
    assert last(warm, "--out") == "runs/ce2bn-p0.8-n10000-s1" and last(warm, "--method") == "ce"
    assert last(warm, "--model") == "mnist_cnn_bn" and last(warm, "--epochs") == "2" and last(warm, "--seed") == "1"
    assert paper("limit_l-s+init", 0.8, 10000) == "0.939"
    # the cheap head starts the classifier (the head reads its features) from a 5-epoch CE run
    head_run = Path("runs/limit_head+init-p0.8-n10000-s1")
    head = cell_args("limit_head+init", 0.8, 10000, 1, d, head_run, d)
    head_warm = warmup_args("limit_head+init", 0.8, 10000, 1, d, head_run)
    assert last(head, "--init-from") == "runs/ce5-p0.8-n10000-s1" and last(head, "--init-target") == "classifier"
    assert last(head, "--predictor") == "head" and last(head, "--epochs") == "55"
    assert last(head, "--predictor-warmup") == "1"
    assert last(head_warm, "--model") == "mnist_cnn" and last(head_warm, "--epochs") == "5"
    shards = make_digit_shards(tmp_path / "d", n_train=500, n_test=100)
    argv = ["--shards", str(shards), "--methods", "limit_l-s+init", "--p", "0.5", "--n", "300", "--seeds", "0",
            "--runs", str(tmp_path / "runs"), "--csv", str(tmp_path / "r.csv"), "--max-epochs", "3"]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "r.csv")))
    assert [r["method"] for r in rows] == ["limit_l-s+init"] and rows[0]["epochs"] == "1"
    cfg = json.loads((tmp_path / "runs/limit_l-s+init-p0.5-n300-s0/config.json").read_text())
    assert cfg["init_from"].endswith("ce2bn-p0.5-n300-s0") and cfg["init_target"] == "predictor"
    assert json.loads((tmp_path / "runs/ce2bn-p0.5-n300-s0/final.json").read_text())["epochs"] == 2
