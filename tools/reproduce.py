"""The paper's MNIST protocol (Table 1, Tables 4-5) as a resumable grid of runs.

    python tools/reproduce.py --shards shards [--methods ce,limit_l-s] [--p 0.8] [--n 10000]
        [--seeds 0] [--runs runs/reproduce] [--csv results/mnist.csv]
    python tools/reproduce.py --shards shards --subset      # the 10-minute cell: p=0.8, n=10^4, CE vs LIMIT_L-S

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

from train.limit import cli as train_cli

COLUMNS = ["method", "p", "n", "seed", "epochs", "best_val_acc", "test_acc", "test_acc_last", "auc", "wall_s"]
LIMIT = ["--method", "limit", "--predictor-model", "mnist_cnn_bn", "--beta", "10"]
METHODS = {                                   # method -> flags (paper section 5, design.md 2)
    "ce": ["--method", "ce"], "mae": ["--method", "mae"], "gce": ["--method", "gce"],
    "fw": ["--method", "fw"], "dmi": ["--method", "dmi", "--lr", "1e-4"],
    "limit_g-s": [*LIMIT, "--predictor-loss", "mse"],
    "limit_l-s": [*LIMIT, "--predictor-loss", "mae"],
    "limit_l+s": [*LIMIT, "--predictor-loss", "mae", "--sample", "--sigma", "0.1"],
    "softreg": ["--method", "softreg", "--lambda", "0.01", "--beta", "0.1"],
    "ce+ln": ["--method", "ce", "--grad-noise", "laplace", "--grad-noise-sigma", "25.6"],
}
# Epoch budget and patience per training-set size: small sets need more passes to take the
# same number of steps; patience ends runs that stopped improving (the paper: 400 / 100).
BUDGET = {1000: (200, 40), 10000: (60, 15), 48000: (25, 8)}


def cell_args(method: str, p: float, n: int, seed: int, shards: Path, run: Path, ce_run: Path,
              max_epochs: int = 0) -> list[str]:
    epochs, patience = BUDGET.get(n, (30, 10))
    epochs = min(epochs, max_epochs) if max_epochs else epochs
    args = ["--data", str(shards), "--model", "mnist_cnn", "--noise", f"uniform:{p}", "--noise-seed", str(seed),
            "--seed", str(seed), "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "256",
            "--epochs", str(epochs), "--patience", str(patience), "--workers", "2", "--out", str(run)]
    if n < 48000:
        args += ["--max-train-samples", str(n)]
    if method in ("fw", "dmi"):
        args += ["--init-from", str(ce_run), "--epochs", str(max(1, epochs // 4))]
    return args + METHODS[method]


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


def append(path: Path, row: dict) -> None:
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        w.writerow(row)


def run_cell(method, p, n, seed, args) -> dict:
    run = args.runs / f"{method}-p{p}-n{n}-s{seed}"
    ce_run = args.runs / f"ce-p{p}-n{n}-s{seed}"
    t0 = time.time()
    if train_cli(cell_args(method, p, n, seed, args.shards, run, ce_run, args.max_epochs)) != 0:
        raise SystemExit(f"reproduce: {run.name} failed")
    final = json.loads((run / "final.json").read_text())
    return {"method": method, "p": p, "n": n, "seed": seed, "epochs": final["epochs"],
            "best_val_acc": final["best_val_acc"], "test_acc": final["test_acc"],
            "test_acc_last": final["test_acc_last"], "auc": detection_auc(run) if p > 0 else None,
            "wall_s": round(time.time() - t0, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, default=Path("shards"))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--p", default="0.0,0.5,0.8")
    ap.add_argument("--n", default="1000,10000,48000")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--runs", type=Path, default=Path("runs/reproduce"))
    ap.add_argument("--csv", type=Path, default=Path("results/mnist.csv"))
    ap.add_argument("--max-epochs", type=int, default=0, help="cap every cell's epoch budget (smoke runs)")
    ap.add_argument("--subset", action="store_true", help="p=0.8, n=10^4, CE vs LIMIT_L-S, seed 0")
    args = ap.parse_args(argv)
    if args.subset:
        args.methods, args.p, args.n, args.seeds = "ce,limit_l-s", "0.8", "10000", "0"
    methods = args.methods.split(",")
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
