"""`make demo`: cross-entropy vs LIMIT_L-S on MNIST with n=10,000 training samples and 80%
uniform label noise (the paper's Table 1 setting), model selection on the noisy validation
split, then label-noise detection on the LIMIT run. Prints a side-by-side table.

    python tools/demo.py --shards shards --runs runs [--ce-epochs 20] [--limit-epochs 30]"""
import argparse
import json
import sys
import time
from pathlib import Path

from train.limit import cli as train_cli
from train.runfolder import resume_args

COMMON = ["--model", "mnist_cnn", "--max-train-samples", "10000", "--noise", "uniform:0.8",
          "--optimizer", "adam", "--lr", "1e-3", "--batch-size", "256", "--workers", "2"]


def train(name: str, shards: Path, runs: Path, epochs: int, *extra: str) -> dict:
    out = runs / name
    # a rerun of the demo continues (or, finished, just reports) its own runs: runfolder.resume_args
    argv = ["--data", str(shards / "mnist-{000..009}.tar"), *COMMON, "--epochs", str(epochs),
            "--out", str(out), *extra, *resume_args(out)]
    print(f"\n== {name}: python train/limit.py {' '.join(argv)}", flush=True)
    if train_cli(argv) != 0:
        sys.exit(f"demo: training {name} failed")
    final = json.loads((out / "final.json").read_text())
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final["train_acc_flipped_last"] = rows[-1]["train_acc_flipped"]
    return final


def detect(run: Path) -> dict | None:
    """Rank the training labels of a run (tools/rank_labels.py); None when unavailable."""
    try:
        from tools.rank_labels import cli as rank_main
    except ImportError:
        return None
    out = run / "labels"
    if rank_main(["--run", str(run), "--out", str(out), "--split", "train"]) != 0:
        return None
    from tools.review_labels import cli as review_main          # the page a person reviews with
    review_main(["--labels", str(out), "--out", str(run / "review"), "--top", "1000"])
    return json.loads((out / "summary.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shards", type=Path, default=Path("shards"))
    p.add_argument("--runs", type=Path, default=Path("runs"))
    p.add_argument("--ce-epochs", type=int, default=20)
    p.add_argument("--limit-epochs", type=int, default=30)
    args = p.parse_args(argv)
    t0 = time.time()
    ce = train("demo-ce", args.shards, args.runs, args.ce_epochs, "--method", "ce")
    # --recipe none: the demo's measured recipe (README), not --method limit's 60-epoch default
    lim = train("demo-limit", args.shards, args.runs, args.limit_epochs, "--method", "limit", "--recipe", "none",
                "--predictor-loss", "mae", "--beta", "10", "--no-sample", "--predictor-model", "mnist_cnn_bn")
    det = detect(args.runs / "demo-limit")
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"  # noqa: E731
    print("\nMNIST, n=10,000, 80% uniform label noise (test accuracy; model chosen on noisy val)")
    print(f"{'method':<12}{'best-val test':>15}{'last test':>11}{'acc on flipped (last)':>23}")
    for name, r in (("CE", ce), ("LIMIT_L-S", lim)):
        print(f"{name:<12}{fmt(r['test_acc']):>15}{fmt(r['test_acc_last']):>11}{fmt(r['train_acc_flipped_last']):>23}")
    print(f"LIMIT - CE (best-val test): {lim['test_acc'] - ce['test_acc']:+.3f}")
    if det:
        print(f"label-noise detection on LIMIT's train labels: ROC AUC {det['roc_auc']:.4f}, "
              f"precision@{det['n_wrong']} {det['precision_at_k']:.3f} ({args.runs}/demo-limit/labels)")
        page = args.runs / "demo-limit" / "review" / "index.html"
        if page.exists():
            print(f"review the 1,000 most suspicious labels in a browser: {page.resolve().as_uri()}")
    print(f"demo wall time {time.time() - t0:.0f} s; runs in {args.runs}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
