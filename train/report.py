"""The pictures and tables people look at: learning curves and a per-epoch summary.csv for a
run (written at the end of training), and Fig. 2's curves per method. Label review's metrics
and pictures live in tools/review/ (training never imports it).

    python -m train.report RUN_DIR      # (re)draw RUN_DIR/curves.png and summary.csv"""
import json
import sys
from pathlib import Path

import numpy as np

from pipeline import safe_io
from pipeline.csv_cells import write_csv
from train.runfolder import read_jsonl

# summary.csv's leading columns (timm-like); any other metric follows in first-seen order
CSV_FIRST = ("epoch", "train_loss", "train_acc", "train_acc_clean", "train_acc_flipped", "train_acc_kept",
             "val_acc", "val_acc_clean", "test_acc", "test_acc_clean", "lr")
CURVES = (("train_acc", "train, given labels"), ("train_acc_clean", "train, clean labels"),
          ("train_acc_flipped", "train, flipped samples (memorized)"), ("val_acc", "val (noisy labels)"),
          ("test_acc", "test (clean labels)"))


def pyplot():
    import matplotlib
    matplotlib.use("Agg")              # files only; never a display
    import matplotlib.pyplot as plt
    return plt


# ---- learning curves ----

def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl rows by epoch; a resumed run's repeated epoch keeps its last row."""
    by_epoch = {}
    for row in read_jsonl(path):
        by_epoch[row["epoch"]] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def write_summary_csv(rows: list[dict], path: Path) -> None:
    cols = [c for c in CSV_FIRST if any(c in r for r in rows)]
    for r in rows:
        cols += [k for k in r if k not in cols]
    write_csv(path, cols, [{k: ("" if v is None else v) for k, v in r.items()} for r in rows])


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator
    epochs = [r["epoch"] for r in rows]
    col = lambda k: [np.nan if r.get(k) is None else r[k] for r in rows]  # noqa: E731
    fig, (ax, lx) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in CURVES:
        if any(r.get(key) is not None for r in rows):
            ax.plot(epochs, col(key), marker="o", markersize=3, label=label)
    ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title=title or "accuracy")
    for a in (ax, lx):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    lx.plot(epochs, col("train_loss"), marker="o", markersize=3, color="black")
    lx.set(xlabel="epoch", ylabel="train loss", title="training objective")
    lx.grid(alpha=0.3)
    fig.tight_layout()
    safe_io.savefig(fig, path, dpi=100)
    plt.close(fig)


def plot_methods(curves: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """The paper's Fig. 2: train accuracy on the given (noisy) labels and clean test accuracy
    per epoch, one line per method (curves: method -> metrics.jsonl rows)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, name in zip(axes, ("train_acc", "test_acc"), ("train (given labels)", "test (clean labels)")):
        for method, rows in curves.items():
            ax.plot([r["epoch"] for r in rows], [r.get(key, np.nan) for r in rows], label=method)
        ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title=f"{name} {title}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    safe_io.savefig(fig, path, dpi=100)
    plt.close(fig)


def write_curves(run_dir) -> Path | None:
    """RUN_DIR/metrics.jsonl -> RUN_DIR/curves.png and RUN_DIR/summary.csv; None without metrics."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.jsonl").is_file():
        return None
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return None
    write_summary_csv(rows, run_dir / "summary.csv")
    title = ""
    if (run_dir / "config.json").is_file():
        try:
            cfg = json.loads((run_dir / "config.json").read_text())
            cfg = cfg if isinstance(cfg, dict) else {}
        except ValueError:
            cfg = {}                    # a title is not worth failing a finished run for
        title = f"{cfg.get('method')} {cfg.get('model')}, noise {cfg.get('noise')}"
    plot_curves(rows, run_dir / "curves.png", title)
    return run_dir / "curves.png"


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(write_curves(run))
