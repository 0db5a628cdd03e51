"""The quality matrix (issue 26): dataset x noise x method cells, one resumable command.

    python tools/quality.py --shards mnist=shards,fmnist=/data/fmnist-shards [--datasets fmnist]
        [--noise uniform:0.6] [--methods ce,ce_clean,limit,limit_r2,ce_r2,limit_oracle,ce_oracle] [--seeds 0]
        [--runs runs/quality] [--csv results/quality.csv]
    python tools/quality.py --table            # the CSV as Markdown: CE, the clean ceiling, damage recovered
    python tools/quality.py --figure docs/quality.png
    python tools/quality.py --estimates results/clean_estimate.csv   # the estimate, re-scored per run

Every cell trains with the flags a user would type (train/limit.py's defaults and LIMIT's
recipe do the rest), so what is measured is the default. Methods:
  ce        cross-entropy, the same augmentation LIMIT's recipe gives the dataset, early stopping
            on the noisy validation split (--patience 15): the baseline's best honest settings;
  ce_clean  the same on the clean labels (--noise none): the ceiling, once per dataset and n;
  limit     --method limit and nothing else;
  limit_r2, ce_r2   the machine's second round: rank_labels on the limit cell, then
            tools/second_round.py's fixes, then LIMIT (or CE) again with --label-fixes;
  limit_oracle, ce_oracle   what a person would get for the same effort: an oracle review
            (tools/review_study.py) of as many samples as the machine changed (relabelled or
            dropped), the top of the same ranking, each set to its clean label, then LIMIT (or
            CE) again with those fixes.
One CSV row per finished cell; cells already there are skipped, so the matrix can be stopped
and resumed (a killed cell continues from its checkpoint)."""
import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from pipeline import safe_io
from pipeline.csv_cells import append_row, restore, write_csv
from train.limit import cli as train_cli
from train.runfolder import resume_args

COLUMNS = ["dataset", "noise", "n", "method", "seed", "epochs", "best_epoch", "best_val_acc", "val_acc_clean_est",
           "test_acc", "test_acc_last", "auc", "relabel_precision", "wall_s", "images"]
# dataset -> (train flags, n, epochs, noise levels). Fashion-MNIST's pairs are the confusions
# people make (T-shirt/top>Shirt, Pullover>Coat, Sandal>Sneaker, Ankle boot>Sneaker); MNIST's
# are Patrini et al.'s (2>7, 3>8, 5<>6, 7>1). The synthetic Clothing1M source carries its own
# class-dependent noise (--noise none keeps the given labels), N = 30,000 and 30 epochs: the
# paper's Clothing1M budget.
NOISES = ("uniform:0.4", "uniform:0.6", "uniform:0.8", "pair:0.4")
DATASETS = {
    "mnist": (["--model", "mnist_cnn", "--noise-pairs", "2>7,3>8,5>6,6>5,7>1"], 10000, 60, NOISES),
    "fmnist": (["--model", "mnist_cnn", "--noise-pairs", "0>6,2>4,5>7,9>7"], 10000, 60, NOISES),
    "clothing": (["--model", "resnet18", "--image-size", "64"], 30000, 30, ("none",)),
}
DIGIT_AUGMENT = ["--augment", "pad:2"]          # LIMIT's recipe on cards without a train crop
METHODS = ("ce", "ce_clean", "limit", "limit_r2", "ce_r2", "limit_oracle", "ce_oracle")


def cell_name(dataset, noise, n, method, seed) -> str:
    return f"{dataset}-{noise.replace(':', '')}-n{n}-{method}-s{seed}"


def train_args(dataset: str, noise: str, n: int, method: str, seed: int, shards: str, run: Path,
               fixes: Path | None) -> list[str]:
    flags, _, epochs, _ = DATASETS[dataset]
    args = ["--data", shards, *flags, "--max-train-samples", str(n), "--epochs", str(epochs), "--seed", str(seed),
            "--noise-seed", str(seed), "--noise", "none" if method == "ce_clean" else noise,
            "--workers", "1", "--cache-eval", "--out", str(run)]
    if method.startswith("ce"):
        args += ["--method", "ce", "--patience", "15"] + (DIGIT_AUGMENT if dataset != "clothing" else [])
    else:
        args += ["--method", "limit"]
    return args + (["--label-fixes", str(fixes)] if fixes else [])


def rank(run: Path) -> dict:
    """rank_labels on the run's train split; its summary.json."""
    from tools.rank_labels import cli as rank_cli
    labels = run / "labels"
    if not (labels / "summary.json").is_file() and rank_cli(["--run", str(run), "--out", str(labels)]) != 0:
        raise SystemExit(f"quality: rank_labels on {run} failed")
    return json.loads((labels / "summary.json").read_text())


def second_round_fixes(limit_run: Path) -> tuple[Path, dict]:
    from tools.second_round import cli as fixes_cli
    rank(limit_run)
    fixes = limit_run / "second_round.csv"
    if not fixes.is_file() and fixes_cli([str(limit_run / "labels"), "--out", str(fixes)]) != 0:
        raise SystemExit(f"quality: second_round on {limit_run} failed")
    return fixes, json.loads(fixes.with_suffix(".json").read_text())


def oracle_review_fixes(limit_run: Path) -> tuple[Path, dict]:
    """The oracle's review of as many samples as the machine's second round changed, the most
    suspicious first (the same ranking), as the review page's CSV; its report beside it."""
    from tools.review.study import oracle_fixes, pick
    from tools.review_study import ranked
    _, machine = second_round_fixes(limit_run)
    fixes, report = limit_run / "oracle_review.csv", limit_run / "oracle_review.json"
    if not report.is_file():
        rows, k = ranked(limit_run), machine["relabel"] + machine["drop"]
        precision, fixed = oracle_fixes(rows, pick(rows, "top", k, 0), fixes)
        safe_io.write_json(report, {"reviewed": k, "wrong_among_reviewed": round(precision, 4), "fixed": fixed})
    return fixes, json.loads(report.read_text())


def run_cell(dataset, noise, n, method, seed, shards, runs: Path) -> dict:
    run = runs / cell_name(dataset, noise, n, method, seed)
    fixes, fix_report = None, {}
    if method.endswith(("_r2", "_oracle")):
        limit_run = runs / cell_name(dataset, noise, n, "limit", seed)
        if not (limit_run / "final.json").is_file():
            raise SystemExit(f"quality: {method} needs the limit cell {limit_run.name} first")
        fixes, fix_report = (second_round_fixes if method.endswith("_r2") else oracle_review_fixes)(limit_run)
    t0 = time.time()
    if train_cli(train_args(dataset, noise, n, method, seed, shards, run, fixes) + resume_args(run)) != 0:
        raise SystemExit(f"quality: {run.name} failed")
    return cell_row(dataset, noise, n, method, seed, run, fix_report, time.time() - t0)


def cell_row(dataset, noise, n, method, seed, run: Path, fix_report: dict, wall_s: float) -> dict:
    """The CSV row of a finished run folder (its final.json, metrics.jsonl and labels' AUC)."""
    final = json.loads((run / "final.json").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    auc = rank(run).get("roc_auc") if noise != "none" or dataset == "clothing" else None
    return {"dataset": dataset, "noise": noise, "n": n, "method": method, "seed": seed, "epochs": final["epochs"],
            "best_epoch": final["best_epoch"], "best_val_acc": final["best_val_acc"],
            "val_acc_clean_est": final.get("best_val_acc_clean_est"), "test_acc": final["test_acc"],
            "test_acc_last": final["test_acc_last"], "auc": auc,
            "relabel_precision": fix_report.get("relabel_precision"), "wall_s": round(wall_s, 1),
            "images": sum(r.get("samples_seen", 0) for r in rows)}


def done(path: Path) -> set:
    if not path.is_file():
        return set()
    with open(path) as f:
        return {(r["dataset"], r["noise"], int(r["n"]), r["method"], int(r["seed"])) for r in csv.DictReader(f)}


def append(path: Path, row: dict) -> None:
    append_row(path, COLUMNS, row)


# ---- the table ----
def read(path: Path) -> dict:
    """(dataset, noise, method) -> {seed: row}."""
    cells: dict = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            cells.setdefault((r["dataset"], r["noise"], r["method"]), {})[int(r["seed"])] = r
    return cells


def mean(rows: dict, key: str) -> float | None:
    v = [float(r[key]) for r in rows.values() if r.get(key) not in ("", "None", None)]
    return float(np.mean(v)) if v else None


def table(path: Path) -> str:
    """One line per (dataset, noise, method): test accuracy at the best noisy-validation epoch
    (mean over seeds), CE's and the clean ceiling's beside it, damage recovered =
    (method - CE) / (ceiling - CE), the clean-accuracy estimate's error, AUC, cost vs CE."""
    cells = read(path)
    fmt = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = ["| dataset | noise | method | seeds | test at best val | CE | clean ceiling | damage recovered | "
             "clean est - test | AUC | relabel precision | wall vs CE | images vs CE |", "|" + "---|" * 13]
    for (ds, noise, method), rows in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], METHODS.index(kv[0][2]))):
        ce = cells.get((ds, noise, "ce"), {})
        ceiling = next((v for (d, _, m), v in cells.items() if d == ds and m == "ce_clean"), {})
        acc, ce_acc, top = mean(rows, "test_acc"), mean(ce, "test_acc"), mean(ceiling, "test_acc")
        rec = (acc - ce_acc) / (top - ce_acc) if None not in (acc, ce_acc, top) and top > ce_acc and method != "ce_clean" else None
        est = [float(r["val_acc_clean_est"]) - float(r["test_acc"]) for r in rows.values()
               if r.get("val_acc_clean_est") not in ("", "None", None)]
        cost = lambda k: fmt(mean(rows, k) / mean(ce, k), 2) if mean(ce, k) else "-"  # noqa: E731
        lines.append(f"| {ds} | {noise} | {method} | {len(rows)} | **{fmt(acc)}** | {fmt(ce_acc)} | {fmt(top)} | "
                     f"{fmt(rec, 2)} | {fmt(float(np.mean(est)) if est else None, 3)} | {fmt(mean(rows, 'auc'))} | "
                     f"{fmt(mean(rows, 'relabel_precision'), 3)} | {cost('wall_s')} | {cost('images')} |")
    return "\n".join(lines + ["", estimate_summary(path)])


def estimate_summary(path: Path) -> str:
    """The clean-accuracy estimate over every run (issue 26's goal: median |error| <= 0.01,
    worst <= 0.03): errors are estimate - clean test accuracy at the selected epoch."""
    errs, none = [], 0
    for rows in read(path).values():
        for r in rows.values():
            if r.get("val_acc_clean_est") in ("", "None", None):
                none += 1
            else:
                errs.append(float(r["val_acc_clean_est"]) - float(r["test_acc"]))
    if not errs:
        return f"Clean-accuracy estimate: none given ({none} runs)."
    worst = max(errs, key=abs)
    return (f"Clean-accuracy estimate over {len(errs)} runs: median |error| {np.median(np.abs(errs)):.3f}, "
            f"worst {worst:+.3f}; {none} runs gave none.")


def figure(path: Path, out: Path) -> None:
    """Test accuracy per (dataset, noise) cell, one bar per method, the ceiling as a line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cells = read(path)
    groups = sorted({(d, n) for d, n, _ in cells})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups)), 4))
    width = 0.8 / len(METHODS)
    for i, m in enumerate(METHODS):
        ys = [mean(cells.get((d, n, m), {}), "test_acc") or 0 for d, n in groups]
        ax.bar(np.arange(len(groups)) + i * width, ys, width, label=m)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, [f"{d}\n{n}" for d, n in groups], fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("test accuracy at the best noisy-validation epoch")
    ax.legend(fontsize=7, ncol=len(METHODS))
    fig.tight_layout()
    safe_io.savefig(fig, out, dpi=110)


# ---- the clean-accuracy estimate, re-scored on every finished run ----
ESTIMATE_COLUMNS = ["run", "dataset", "noise", "method", "seed", "test_acc", "estimate", "se", "error",
                    "model_anchor_estimate", "model_anchor_error"]


def val_outputs(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """(probs (N, K), given labels (N,)) of the run's best checkpoint on its validation split:
    tools/predict.py's top-K table (K = every class) and the given labels re-drawn from the
    run's own --noise and --noise-seed (pipeline.loader.given_labels, the trainer's)."""
    import pyarrow.parquet as pq
    import torch

    from pipeline.loader import given_labels, resolve
    from tools.predict import cli as predict_cli
    from tools.review.ranking import saved_config
    cfg = saved_config(run / "config.json", False)
    ds = resolve(cfg.data)
    k, out = len(ds.classes), run / "val_predictions"
    if not (out / "predictions.parquet").is_file() and predict_cli(
            [str(run), "--data", str(ds.card_path.parent), "--split", "val", "--top-k", str(k), "--out", str(out),
             "--workers", "1"]) != 0:
        raise SystemExit(f"quality: predicting {run.name}'s validation split failed")
    t = pq.read_table(out / "predictions.parquet").to_pydict()
    n = len(t["index"])
    probs = np.zeros((n, k))
    for j in range(1, k + 1):
        probs[np.arange(n), np.asarray(t[f"pred{j}"])] = np.asarray(t[f"prob{j}"])
    clean, index = (torch.as_tensor(np.asarray(t[c], np.int64)) for c in ("clean_label", "index"))
    noise, _ = given_labels(ds, cfg.noise, cfg.noise_pairs, cfg.noise_seed)   # validation takes no fixes
    return probs, noise.apply(clean, index).numpy()


def estimates(csv_path: Path, runs: Path, out: Path) -> str:
    """train/clean_estimate.estimate on each noisy run of the matrix at its selected epoch, beside
    Patrini's rule on the same probabilities (T from the model's own probabilities at the
    anchors), both against the clean test accuracy; one row per run to `out`, and the summary.
    The matrix's own val_acc_clean_est column is rewritten with the re-scored estimate, so its
    table shows the estimator of today (each run's final.json keeps what it printed)."""
    rows = [rescore(run, ds, noise, method, seed, float(r["test_acc"]))
            for (ds, noise, method), seeds in sorted(read(csv_path).items()) for seed, r in sorted(seeds.items())
            if noise != "none" and method != "ce_clean"
            and ((run := runs / cell_name(ds, noise, int(r["n"]), method, seed)) / "final.json").is_file()]
    write_csv(out, ESTIMATE_COLUMNS, rows)
    new = {(r["dataset"], r["noise"], r["method"], r["seed"]): r["estimate"] for r in rows}
    with open(csv_path) as f:
        matrix = [{k: restore(v) for k, v in r.items()} for r in csv.DictReader(f)]
    for r in matrix:
        if (key := (r["dataset"], r["noise"], r["method"], int(r["seed"]))) in new:
            r["val_acc_clean_est"] = new[key]
    write_csv(csv_path, COLUMNS, matrix)
    return "\n".join(f"{name}: {len(errs)} of {len(rows)} runs estimated, median |error| "
                     f"{np.median(np.abs(errs)):.4f}, worst {max(errs, key=abs):+.3f}"
                     for key, name in (("error", "counted anchors (the estimate)"),
                                       ("model_anchor_error", "the model's anchors"))
                     if (errs := [row[key] for row in rows if row[key] is not None]))


def rescore(run: Path, ds: str, noise: str, method: str, seed: int, test: float) -> dict:
    """One row of the estimates file: both rules on the run's validation outputs."""
    from train.clean_estimate import anchor_transition, clean_accuracy, estimate
    probs, given = val_outputs(run)
    est = estimate(probs, given)
    old = clean_accuracy(probs.argmax(1), given, anchor_transition(probs))[0]
    rounded = lambda v: None if v is None else round(v, 4)  # noqa: E731
    return {"run": run.name, "dataset": ds, "noise": noise, "method": method, "seed": seed, "test_acc": test,
            "estimate": rounded(est["acc_clean_est"]), "se": est["acc_clean_est_se"],
            "error": None if est["acc_clean_est"] is None else rounded(est["acc_clean_est"] - test),
            "model_anchor_estimate": rounded(old), "model_anchor_error": None if old is None else rounded(old - test)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", default="", help="dataset=FOLDER,... (each a make_shards output folder with its card)")
    ap.add_argument("--datasets", default="mnist,fmnist,clothing")
    ap.add_argument("--noise", default="", help="comma-separated noise specs (default: the dataset's own list)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--runs", type=Path, default=Path("runs/quality"))
    ap.add_argument("--csv", type=Path, default=Path("results/quality.csv"))
    ap.add_argument("--table", action="store_true", help="print the CSV as Markdown and exit")
    ap.add_argument("--figure", type=Path, help="draw the CSV's cells into this PNG and exit")
    ap.add_argument("--estimates", type=Path, help="re-score the clean-accuracy estimate on every finished noisy "
                    "run in --runs (its best checkpoint on validation), write one row per run here and exit")
    args = ap.parse_args(argv)
    if args.estimates:
        if not args.csv.is_file():
            ap.error(f"no results at {args.csv}")
        print(estimates(args.csv, args.runs, args.estimates))
        return 0
    if args.table or args.figure:
        if not args.csv.is_file():
            ap.error(f"no results at {args.csv}")
        if args.figure:
            figure(args.csv, args.figure)
        else:
            print(table(args.csv))
        return 0
    shards = dict(item.split("=", 1) for item in args.shards.split(",") if "=" in item)
    methods = args.methods.split(",")
    if set(methods) - set(METHODS) or set(args.datasets.split(",")) - set(DATASETS):
        ap.error(f"methods from {METHODS}, datasets from {sorted(DATASETS)}")
    finished = done(args.csv)
    for seed in map(int, args.seeds.split(",")):
        for ds in args.datasets.split(","):
            if ds not in shards:
                print(f"quality: no --shards for {ds}; skipped", file=sys.stderr)
                continue
            _, n, _, noises = DATASETS[ds]
            for noise in (args.noise.split(",") if args.noise else noises):
                for method in methods:
                    key = (ds, noise, n, method, seed)
                    ceiling_done = method == "ce_clean" and any(k[0] == ds and k[3] == "ce_clean" for k in finished)
                    if key in finished or ceiling_done:
                        continue
                    row = run_cell(ds, noise, n, method, seed, shards[ds], args.runs)
                    append(args.csv, row)
                    finished.add(key)
                    print(f"quality: {row}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
