"""The paper's MNIST protocol (Table 1, Tables 4-5) as a resumable grid of runs.

    python tools/reproduce.py --shards shards [--methods ce,limit_l-s] [--p 0.8] [--n 10000]
        [--seeds 0] [--runs runs/reproduce] [--csv results/mnist.csv]
    python tools/reproduce.py --shards shards --subset      # the short look: p=0.8, n=10^4, CE vs LIMIT_L-S, 60 epochs
    python tools/reproduce.py --table                       # the CSV as Markdown, beside the paper's numbers
    python tools/reproduce.py --figure docs/mnist-fig2.png --p 0.8 --n 10000 --seeds 0    # Fig. 2

48k/12k train/validation split (make_shards mnist), noise on train and validation, model
chosen on the noisy validation split, clean test. One row per finished run is appended to the
CSV (method, p, n, seed, epochs, best_val_acc, test_acc, test_acc_last, auc, wall_s); cells
already there are skipped, so the grid can be stopped and resumed. FW and DMI fine-tune the
CE run of the same cell, which runs first."""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.csv_cells import append_row
from train.limit import cli as train_cli
from train.runfolder import resume_args

COLUMNS = ["method", "p", "n", "seed", "epochs", "best_val_acc", "test_acc", "test_acc_last", "auc", "wall_s"]
# LIMIT's 60-epoch recipe (RESULTS.md, "Tuning"; train/limit.py's --recipe auto, spelled out here
# so that a cell's flags say what ran): batch 64 (4x the optimizer steps per epoch of 256), a
# random shift of up to 2 px (--augment pad:2, slows the predictor's memorizing), the BatchNorm
# predictor, an EMA of the classifier's weights (steadier selection on the noisy validation
# split) and beta 5 at every noise level (beta 10 until the 3-seed beta comparison in RESULTS.md). The 300-epoch recipe before it (batch 256, no shift,
# beta 30 at p=0.8) is `--train-args "--batch-size 256 --augment card --beta 30 --epochs 300
# --patience 100"`.
LIMIT = ["--method", "limit", "--recipe", "none", "--predictor-model", "mnist_cnn_bn", "--model-ema",
         "--batch-size", "64", "--augment", "pad:2"]
BETA = {}                   # p -> beta where it differs from DEFAULT_BETA
DEFAULT_BETA = 5.0          # p=0.8, n=10^4, 60 epochs, batch 64 + pad:2, 3 seeds: RESULTS.md "Tuning"
METHODS = {                                   # method -> flags (paper section 5, docs/architecture.md section 2)
    "ce": ["--method", "ce"], "mae": ["--method", "mae"], "gce": ["--method", "gce"],
    "fw": ["--method", "fw"], "dmi": ["--method", "dmi", "--lr", "1e-4"],
    "limit_g-s": [*LIMIT, "--predictor-loss", "mse"],
    "limit_l-s": [*LIMIT, "--predictor-loss", "mae"],
    "limit_l+s": [*LIMIT, "--predictor-loss", "mae", "--sample", "--sigma", "0.1"],
    "limit_l-s+init": [*LIMIT, "--predictor-loss", "mae", "--init-target", "predictor"],
    "limit_head+init": [*LIMIT, "--predictor-loss", "mae", "--predictor", "head", "--init-target", "classifier",
                        "--predictor-warmup", "1"],
    "softreg": ["--method", "softreg", "--lambda", "0.01", "--beta", "0.1"],
    "ce+ln": ["--method", "ce", "--grad-noise", "laplace", "--grad-noise-sigma", "25.6"],
}
# The paper's test accuracy in % (Tables 4 and 5, means over 5 splits) at n = 10^3, 10^4, 48k,
# printed beside ours by --table; GCE is not in the paper.
PAPER = {
    "ce": {0.0: (94.3, 98.4, 99.2), 0.5: (71.8, 93.1, 97.2), 0.8: (27.0, 69.9, 87.2)},
    "ce+ln": {0.0: (90.0, 95.3, 96.7), 0.5: (66.8, 92.0, 97.6), 0.8: (30.2, 53.1, 74.5)},
    "mae": {0.0: (94.6, 98.3, 99.1), 0.5: (75.6, 95.7, 98.1), 0.8: (25.1, 74.6, 93.2)},
    "fw": {0.0: (93.6, 98.4, 99.2), 0.5: (64.3, 91.6, 97.3), 0.8: (19.0, 61.2, 89.1)},
    "dmi": {0.0: (94.5, 98.5, 99.2), 0.5: (79.8, 95.7, 98.3), 0.8: (30.3, 79.0, 88.8)},
    "softreg": {0.0: (95.7, 98.4, 99.2), 0.5: (76.4, 95.7, 98.2), 0.8: (28.8, 67.0, 89.3)},
    "limit_g-s": {0.0: (95.7, 98.7, 99.3), 0.5: (83.3, 97.1, 98.6), 0.8: (37.1, 82.0, 94.7)},
    "limit_l-s": {0.0: (95.0, 98.7, 99.3), 0.5: (88.2, 97.7, 99.0), 0.8: (35.9, 93.9, 97.7)},
    "limit_l+s": {0.0: (94.8, 98.6, 99.3), 0.5: (88.7, 97.6, 98.9), 0.8: (35.6, 93.3, 97.6)},
}
# Epoch budget and patience per training-set size: small sets need more passes to take the
# same number of steps; patience ends runs that stopped improving (the paper: 400 / 100 for
# all). LIMIT's recipe gets at most 60 epochs everywhere, without early stopping (0: off): it
# is still rising at 60 (RESULTS.md, "Tuning").
BUDGET = {1000: (200, 40), 10000: (60, 20), 48000: (25, 8)}
LIMIT_BUDGET = {1000: (60, 0), 10000: (60, 0), 48000: (60, 0)}
# +init (RESULTS.md, "The 60-epoch recipe"): a CE run for WARMUP epochs (batch 256, its best
# noisy-validation checkpoint) starts the cell, and its epochs count in the cell's 60. method ->
# (CE epochs, CE backbone). limit_l-s+init starts the predictor (the predictor's own backbone),
# so the classifier is taught by a predictor that already knows the easy digits; the cheap head
# (limit_head+init, issue 17 item 4) starts the classifier, whose detached features the head
# reads: from scratch those features carry nothing for the head to predict from. Its first LIMIT
# epoch trains the head alone (--predictor-warmup 1): without it, the CE classifier (0.71) follows
# the untrained head's guesses down to 0.28 in two epochs and stays near 0.33 (RESULTS.md). CE's best
# noisy-validation epoch at p=0.8, n=10^4 is epoch 0-2 (results/mnist.csv), so 5 epochs hold it.
WARMUP = {"limit_l-s+init": (2, "mnist_cnn_bn"), "limit_head+init": (5, "mnist_cnn")}


def warmup_run(run: Path, method: str) -> Path:
    epochs, model = WARMUP[method]
    return run.with_name(f"ce{epochs}{'bn' if model.endswith('_bn') else ''}" + run.name[len(method):])


def warmup_args(method: str, p: float, n: int, seed: int, shards: Path, run: Path) -> list[str]:
    """The CE run whose weights start a +init cell."""
    epochs, model = WARMUP[method]
    return [*cell_args("ce", p, n, seed, shards, warmup_run(run, method), run),
            "--model", model, "--epochs", str(epochs), "--patience", "0"]


def cell_args(method: str, p: float, n: int, seed: int, shards: Path, run: Path, ce_run: Path,
              max_epochs: int = 0, extra: list[str] = ()) -> list[str]:
    epochs, patience = (LIMIT_BUDGET if method.startswith("limit") else BUDGET).get(n, (30, 10))
    epochs = min(epochs, max_epochs) if max_epochs else epochs
    args = ["--data", str(shards), "--model", "mnist_cnn", "--noise", f"uniform:{p}", "--noise-seed", str(seed),
            "--seed", str(seed), "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "256",
            "--epochs", str(epochs), "--patience", str(patience), "--workers", "1", "--out", str(run),
            "--cache-eval"]
    if n < 48000:
        args += ["--max-train-samples", str(n)]
    if method.startswith("limit"):
        args += ["--beta", str(BETA.get(p, DEFAULT_BETA))]
    if method in ("fw", "dmi"):
        args += ["--init-from", str(ce_run), "--epochs", str(max(1, epochs // 4))]
    if method in WARMUP:
        args += ["--init-from", str(warmup_run(run, method)), "--epochs", str(max(1, epochs - WARMUP[method][0]))]
    return args + METHODS[method] + list(extra)       # later flags win: --train-args overrides


def detection_auc(run: Path) -> float | None:
    from tools.rank_labels import cli as rank_main
    if rank_main(["--run", str(run), "--out", str(run / "labels"), "--grid-per-class", "4"]) != 0:
        return None
    return json.loads((run / "labels" / "summary.json").read_text()).get("roc_auc")


def done_cells(path: Path) -> set:
    if not path.exists():
        return set()
    with open(path) as f:
        return {(r["method"], float(r["p"]), int(r["n"]), int(r["seed"])) for r in csv.DictReader(f)}


def append(path: Path, row: dict, columns: list[str] = COLUMNS) -> None:
    """One result row; the header with the file's first row."""
    append_row(path, columns, row)


def run_cell(method, p, n, seed, args) -> dict:
    run = args.runs / f"{method}-p{p}-n{n}-s{seed}"
    ce_run = args.runs / f"ce-p{p}-n{n}-s{seed}"
    t0 = time.time()
    warm = method in WARMUP and not (warmup_run(run, method) / "final.json").is_file()
    if warm and train_cli(warmup_args(method, p, n, seed, args.shards, run) + ["--overwrite"]) != 0:
        raise SystemExit(f"reproduce: {warmup_run(run, method).name} failed")
    # a cell killed earlier continues from its checkpoint (runfolder.resume_args)
    if train_cli(cell_args(method, p, n, seed, args.shards, run, ce_run, args.max_epochs,
                           args.train_args.split()) + resume_args(run)) != 0:
        raise SystemExit(f"reproduce: {run.name} failed")
    final = json.loads((run / "final.json").read_text())
    return {"method": method, "p": p, "n": n, "seed": seed, "epochs": final["epochs"],
            "best_val_acc": final["best_val_acc"], "test_acc": final["test_acc"],
            "test_acc_last": final["test_acc_last"], "auc": detection_auc(run) if p > 0 else None,
            "wall_s": round(time.time() - t0, 1)}


def paper(method: str, p: float, n: int) -> str:
    row = PAPER.get(method.removesuffix("+init"), {}).get(p)
    return f"{row[(1000, 10000, 48000).index(n)] / 100:.3f}" if row and n in (1000, 10000, 48000) else "-"


def table(path: Path) -> str:
    """results CSV -> a Markdown table: one line per (p, n, method), mean and spread over seeds."""
    cells: dict = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            cells.setdefault((float(r["p"]), int(r["n"]), r["method"]), []).append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    lines = ["| p | n | method | seeds | test at best val | min-max | test, last epoch | epochs | "
             "detection AUC | wall s (mean) | paper |", "|" + "---|" * 11]
    for (p, n, method), rows in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))):
        col = lambda k: np.array([float(r[k]) for r in rows if r[k] not in ("", "None")])  # noqa: E731
        acc, auc = col("test_acc"), col("auc")
        spread = f"{acc.min():.4f}-{acc.max():.4f}" if len(acc) > 1 else "-"
        lines.append(f"| {p} | {n} | {method} | {len(rows)} | **{acc.mean():.4f}** | {spread} | "
                     f"{col('test_acc_last').mean():.4f} | {col('epochs').mean():.0f} | "
                     f"{f'{auc.mean():.4f}' if len(auc) else '-'} | {col('wall_s').mean():.0f} | {paper(method, p, n)} |")
    return "\n".join(lines)


def figure(runs: Path, methods: list[str], p: float, n: int, seed: int, out: Path) -> None:
    """The paper's Fig. 2 from the cells' metrics.jsonl (those that have run)."""
    from train.report import plot_methods, read_metrics
    curves = {m: read_metrics(runs / f"{m}-p{p}-n{n}-s{seed}" / "metrics.jsonl") for m in methods
              if (runs / f"{m}-p{p}-n{n}-s{seed}" / "metrics.jsonl").is_file()}
    if not curves:
        raise SystemExit(f"reproduce: no run of {methods} at p={p} n={n} seed {seed} in {runs}")
    plot_methods(curves, out, f"(p={p}, n={n}, seed {seed})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, default=Path("shards"))
    ap.add_argument("--methods", default="", help="comma-separated (default: all; for --figure: ce,mae,dmi,limit_l-s)")
    ap.add_argument("--p", default="0.0,0.5,0.8")
    ap.add_argument("--n", default="1000,10000,48000")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", type=Path, help="run folders (default: runs/reproduce; --subset: runs/subset)")
    ap.add_argument("--csv", type=Path, help="results (default: results/mnist.csv; --subset: results/mnist-subset.csv)")
    ap.add_argument("--max-epochs", type=int, default=0, help="cap every cell's epoch budget (smoke runs)")
    ap.add_argument("--train-args", default="", help="trainer flags appended to every cell, e.g. "
                    "'--sched cosine --epochs 100' (tuning; use its own --csv and --runs)")
    ap.add_argument("--subset", action="store_true", help="the short look: p=0.8, n=10^4, CE vs LIMIT_L-S, seed 0, "
                    "at most 60 epochs, into its own CSV (never the grid's)")
    ap.add_argument("--table", action="store_true", help="print the CSV as a Markdown table (means over seeds) and exit")
    ap.add_argument("--figure", type=Path, help="draw Fig. 2 (train and test accuracy per epoch) of --methods at the "
                    "first --p, --n and --seeds from --runs into this PNG and exit")
    args = ap.parse_args(argv)
    if args.subset:
        args.methods, args.p, args.n, args.seeds = "ce,limit_l-s", "0.8", "10000", "0"
        args.max_epochs = args.max_epochs or 60
    args.runs = args.runs or Path("runs/subset" if args.subset else "runs/reproduce")
    args.csv = args.csv or Path("results/mnist-subset.csv" if args.subset else "results/mnist.csv")
    if args.table:
        if not args.csv.is_file():
            ap.error(f"--table: no results at {args.csv}")
        print(table(args.csv))
        return 0
    if args.figure:
        first = lambda v, t: t(v.split(",")[0])  # noqa: E731
        methods = args.methods.split(",") if args.methods else ["ce", "mae", "dmi", "limit_l-s"]
        figure(args.runs, methods, first(args.p, float), first(args.n, int), first(args.seeds, int), args.figure)
        return 0
    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    methods = [m for m in methods if m not in ("fw", "dmi")] + [m for m in methods if m in ("fw", "dmi")]
    done = done_cells(args.csv)
    for seed in map(int, args.seeds.split(",")):
        for n in map(int, args.n.split(",")):
            for p in map(float, args.p.split(",")):
                for method in methods:
                    if (method, p, n, seed) in done:
                        continue
                    if method in ("fw", "dmi") and not (args.runs / f"ce-p{p}-n{n}-s{seed}" / "final.json").exists():
                        append_ce = run_cell("ce", p, n, seed, args) if ("ce", p, n, seed) not in done else None
                        if append_ce:
                            append(args.csv, append_ce)
                            done.add(("ce", p, n, seed))
                    row = run_cell(method, p, n, seed, args)
                    append(args.csv, row)
                    done.add((method, p, n, seed))
                    print(f"reproduce: {row}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
