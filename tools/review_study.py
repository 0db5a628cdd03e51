"""What a reviewed label is worth (issue 18): fix K labels, retrain, measure test accuracy.

    python tools/review_study.py --shards shards [--k 500,1000,2000,4000] [--picks top,random]
        [--methods ce,limit_l-s] [--seed 0] [--runs runs/review] [--csv results/review-study.csv]
    python tools/review_study.py --shards shards --fixes decisions.csv   # a real reviewer's file
    python tools/review_study.py --table [--csv ...]                       # Markdown table
    python tools/review_study.py --plot docs/review-study.png [--csv ...]  # accuracy against K

The setting is the demo's and the paper's headline cell: MNIST, n=10^4, 80% uniform noise, the
runner's recipes (tools/reproduce.py). First the LIMIT run is trained and ranked (rank_labels:
label_scores.parquet). Then, for each pick of K samples, an oracle reviewer decides them with
their clean labels, written as the review page's CSV (decision relabel with the clean label
where the given label is wrong, keep where it is right), and each method is retrained from
scratch with that file as --label-fixes (fixes apply after the noise, so every run sees the same
noisy labels elsewhere). Picks: `top` = the K most suspicious of the ranking, `random` = K train
samples drawn with the seed, `balanced` = the most suspicious of each predicted class in turn,
or a reviewer's own file (--fixes; K = its decided rows). Precision
is the share of the picked samples whose given label is wrong, i.e. the labels a review fixes.
One CSV row per finished run; rows already there are skipped, so the study resumes.
docs/architecture.md section 9 places this in the review loop."""
import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from tools import reproduce
from tools.reproduce import cell_args, detection_auc
from tools.review.study import oracle_fixes, pick, reviewer_stats
from pipeline import safe_io
from train.limit import cli as train_cli
from train.runfolder import resume_args

P, N = 0.8, 10000
COLUMNS = ["pick", "k", "precision", "fixed", "method", "seed", "epochs", "best_val_acc", "test_acc",
           "test_acc_last", "wall_s"]


def train(method: str, seed: int, shards: Path, run: Path, extra: list[str]) -> dict:
    """One run of the runner's recipe for `method` (resumed if it was killed); its final.json."""
    if not (run / "final.json").is_file():
        if train_cli(cell_args(method, P, N, seed, shards, run, run.parent / "unused", extra=extra)
                     + resume_args(run)) != 0:
            raise SystemExit(f"review_study: {run} failed")
    return json.loads((run / "final.json").read_text())


def ranked(base: Path) -> dict:
    """The base LIMIT run's ranking: index, given label, clean label, most suspicious first."""
    table = base / "labels" / "label_scores.parquet"
    if not table.is_file():
        detection_auc(base)               # rank_labels into base/labels
    cols = ["index", "label", "clean_label", "score", "predictor_pred", "classifier_pred"]
    t = pq.read_table(table, columns=cols).to_pydict()
    order = np.argsort(-np.asarray(t["score"]), kind="stable")
    rows = {c: np.asarray(t[c])[order] for c in cols}
    # the label a reviewer would be shown as the likely one: the predictor's, else the classifier's
    rows["predicted"] = np.where(rows["predictor_pred"] >= 0, rows["predictor_pred"], rows["classifier_pred"])
    return rows
def done_rows(path: Path) -> set:
    if not path.is_file():
        return set()
    with open(path) as f:
        return {(r["pick"], int(r["k"]), r["method"], int(r["seed"])) for r in csv.DictReader(f)}


def append(path: Path, row: dict) -> None:
    reproduce.append(path, row, COLUMNS)


def result(pick_name, k, precision, fixed, method, seed, final) -> dict:
    """One CSV row; wall_s is the training run's own (final.json), rank_labels not included."""
    return {"pick": pick_name, "k": k, "precision": round(precision, 4), "fixed": fixed, "method": method,
            "seed": seed, "epochs": final["epochs"], "best_val_acc": final["best_val_acc"],
            "test_acc": final["test_acc"], "test_acc_last": final["test_acc_last"], "wall_s": round(final["wall_s"], 1)}


def study(args) -> None:
    methods = args.methods.split(",")
    done = done_rows(args.csv)
    base = args.runs / f"limit_l-s-p{P}-n{N}-s{args.seed}"      # tools/reproduce.py's name for the cell
    final = train("limit_l-s", args.seed, args.shards, base, [])
    rows = ranked(base)
    if ("none", 0, "limit_l-s", args.seed) not in done:
        append(args.csv, result("none", 0, 0.0, 0, "limit_l-s", args.seed, final))
        done.add(("none", 0, "limit_l-s", args.seed))
    picks = [(how, int(k)) for how in args.picks.split(",") for k in args.k.split(",")]
    plan = [(args.fixes.stem, 0)] if args.fixes else [("none", 0)] + picks
    # every method's cheap runs first, the biggest K first: a study cut short by the clock has
    # the cells that say the most (CE's whole curve, then LIMIT's ends)
    order = [(m, how, k) for m in methods for how, k in sorted(plan, key=lambda hk: (-hk[1], hk[0]))]
    for method, how, k in order:
        fixes = args.fixes or args.runs / "fixes" / f"{how}-{k}.csv"
        if how == "none":
            precision, fixed, extra = 0.0, 0, []
        elif args.fixes:
            k, precision, fixed = reviewer_stats(rows, fixes, args.shards)
            extra = ["--label-fixes", str(fixes)]
        else:
            precision, fixed = oracle_fixes(rows, pick(rows, how, k, args.seed), fixes)
            extra = ["--label-fixes", str(fixes)]
        if (how, k, method, args.seed) in done:
            continue
        final = train(method, args.seed, args.shards, args.runs / f"{method}-{how}-{k}-s{args.seed}", extra)
        append(args.csv, result(how, k, precision, fixed, method, args.seed, final))
        print(f"review_study: {how} K={k} {method}: test {final['test_acc']:.4f} "
              f"(precision {precision:.3f})", flush=True)


def read(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def table(path: Path) -> str:
    rows = read(path)
    methods = sorted({r["method"] for r in rows})
    acc = {(r["pick"], int(r["k"]), r["method"]): float(r["test_acc"]) for r in rows}
    meta = {(r["pick"], int(r["k"])): (float(r["precision"]), int(r["fixed"])) for r in rows}
    lines = ["| labels reviewed (K) | pick | precision | labels fixed | " + " | ".join(methods) + " |",
             "|" + "---|" * (4 + len(methods))]
    for (how, k), (prec, fixed) in sorted(meta.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        cells = [f"{acc[(how, k, m)]:.4f}" if (how, k, m) in acc else "-" for m in methods]
        lines.append(f"| {k:,} | {how} | {prec:.3f} | {fixed:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(path: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = read(path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in sorted({r["method"] for r in rows}):
        base = [float(r["test_acc"]) for r in rows if r["method"] == method and r["pick"] == "none"]
        for how, style in (("top", "-o"), ("random", "--s")):
            pts = sorted((int(r["k"]), float(r["test_acc"])) for r in rows if r["method"] == method and r["pick"] == how)
            if pts:
                pts = [(0, base[0])] + pts if base else pts
                ax.plot(*zip(*pts), style, label=f"{method}, {how} K")
    ax.set_xlabel("labels reviewed (K)")
    ax.set_ylabel("test accuracy")
    ax.set_title("MNIST, n=10^4, 80% uniform noise: oracle review of K labels")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    safe_io.savefig(fig, safe_io.out_dir(out.parent) / out.name, dpi=120)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shards", type=Path, default=Path("shards"))
    ap.add_argument("--k", default="500,1000,2000,4000")
    ap.add_argument("--picks", default="top,random")
    ap.add_argument("--methods", default="ce,limit_l-s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixes", type=Path, help="a reviewer's fixes file (the review page's CSV) instead of the oracle")
    ap.add_argument("--runs", type=Path, default=Path("runs/review"))
    ap.add_argument("--csv", type=Path, default=Path("results/review-study.csv"))
    ap.add_argument("--table", action="store_true", help="print the CSV as a Markdown table and exit")
    ap.add_argument("--plot", type=Path, help="draw test accuracy against K into this PNG and exit")
    args = ap.parse_args(argv)
    if args.table or args.plot:
        if not args.csv.is_file():
            ap.error(f"no results at {args.csv}")
        print(table(args.csv)) if args.table else plot(args.csv, args.plot)
        return 0
    study(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
