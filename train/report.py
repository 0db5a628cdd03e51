"""The pictures and tables people look at: learning curves and a per-epoch summary.csv for a
run (written at the end of training), and for tools/rank_labels.py the detection metrics
(ROC AUC, average precision) and the grid of suspect labels.

    python -m train.report RUN_DIR      # (re)draw RUN_DIR/curves.png and summary.csv"""
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np

from train.runfolder import read_jsonl

# summary.csv's leading columns (timm-like); any other metric follows in first-seen order
CSV_FIRST = ("epoch", "train_loss", "train_acc", "train_acc_clean", "train_acc_flipped", "train_acc_kept",
             "val_acc", "val_acc_clean", "test_acc", "test_acc_clean", "lr")
CURVES = (("train_acc", "train, given labels"), ("train_acc_clean", "train, clean labels"),
          ("train_acc_flipped", "train, flipped samples (memorized)"), ("val_acc", "val (noisy labels)"),
          ("test_acc", "test (clean labels)"))


def _pyplot():
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
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, restval="", extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def plot_curves(rows: list[dict], path: Path, title: str = "") -> None:
    plt = _pyplot()
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
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_methods(curves: dict[str, list[dict]], path: Path, title: str = "") -> None:
    """The paper's Fig. 2: train accuracy on the given (noisy) labels and clean test accuracy
    per epoch, one line per method (curves: method -> metrics.jsonl rows)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, name in zip(axes, ("train_acc", "test_acc"), ("train (given labels)", "test (clean labels)")):
        for method, rows in curves.items():
            ax.plot([r["epoch"] for r in rows], [r.get(key, np.nan) for r in rows], label=method)
        ax.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02), title=f"{name} {title}")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
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


# ---- detection metrics ----

def _ranked(score: np.ndarray, positive: np.ndarray, k: int) -> dict:
    """One descending sort shared by every metric. Tie groups (equal scores) are summarized
    by their last position and the positives up to it; ~40 bytes a sample at the peak."""
    order = np.argsort(-score, kind="stable")
    s, y = score[order], positive[order]
    del order
    out = {"precision_at_k": float(y[:k].mean()) if k else None,
           "threshold": float(s[k - 1]) if k else None}
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1] if len(s) else np.zeros(0, np.int64)
    del s
    out["last"], out["tp"] = last, np.cumsum(y, dtype=np.int64)[last]
    return out


def roc_auc(last: np.ndarray, tp: np.ndarray) -> float | None:
    """Mann-Whitney U / (n_pos n_neg) from ascending ranks, tied scores sharing their average
    rank: P(score_pos > score_neg) + P(tie) / 2."""
    n, n_pos = int(last[-1]) + 1 if len(last) else 0, int(tp[-1]) if len(tp) else 0
    n_neg = n - n_pos
    if not n_pos or not n_neg:
        return None
    first = np.r_[0, last[:-1] + 1]
    pos = np.diff(tp, prepend=0)
    rank_sum = float(np.dot(pos, n - (first + last) / 2.0))   # descending position i = rank n - i
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def average_precision(last: np.ndarray, tp: np.ndarray) -> float | None:
    """sum_n (R_n - R_{n-1}) P_n over distinct thresholds (scikit-learn's definition)."""
    if not len(tp) or not tp[-1]:
        return None
    return float(np.dot(np.diff(tp, prepend=0), tp / (last + 1.0)) / tp[-1])


def detection_summary(score: np.ndarray, given: np.ndarray, clean: np.ndarray) -> dict:
    """How well the scores find the wrong labels, on the samples whose clean label is known;
    k = the number of wrong labels, threshold = the k-th highest score."""
    known = clean >= 0
    s, wrong = score[known], (given != clean)[known]
    k = int(wrong.sum())
    r = _ranked(s, wrong, k)
    return {"n": int(len(score)), "n_known": int(known.sum()), "n_wrong": k,
            "frac_wrong": k / len(s) if len(s) else None, "roc_auc": roc_auc(r["last"], r["tp"]),
            "average_precision": average_precision(r["last"], r["tp"]), "k": k,
            "precision_at_k": r["precision_at_k"], "threshold": r["threshold"]}


# ---- the suspect grid ----

SUSPECT_COLUMNS = ("rank", "key", "index", "shard", "source", "given", "predicted", "score")


def grid_rows(label: np.ndarray, rank: np.ndarray, per_class: int, n_classes: int,
              max_classes: int = 30) -> np.ndarray:
    """Rows of the `per_class` best-ranked samples of each given class (at most max_classes)."""
    picked = [np.zeros(0, np.int64)]
    for c in range(min(n_classes, max_classes)):
        rows = np.flatnonzero(label == c)
        picked.append(rows[np.argsort(rank[rows])[:per_class]])
    return np.concatenate(picked)


def write_suspects_csv(path: Path, rows: list[dict]) -> None:
    """The relabeling list: rank, key, index, shard, source path, given and predicted class
    names, score."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=SUSPECT_COLUMNS, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_images(shard_dir: Path, wanted: dict) -> dict:
    """{(shard, key): PIL image} for the wanted {shard: {keys}}, reading only those shards."""
    from PIL import Image

    from pipeline.records import find_images
    return {(shard, key): Image.open(io.BytesIO(data)).convert("RGB")
            for shard, key, data in find_images(shard_dir, wanted)}


def draw_suspects(path: Path, tiles: list, classes: list, shard_dir: Path, per_class: int) -> None:
    """tiles: [(manifest record, given, predicted)], grouped by given class, most suspicious
    first: one row per class, captioned "given -> predicted"."""
    plt = _pyplot()
    rows = sorted({g for _, g, _ in tiles})
    wanted = {}
    for rec, _, _ in tiles:
        wanted.setdefault(rec["shard"], set()).add(rec["key"])
    images = read_images(Path(shard_dir), wanted)
    cols = max(1, per_class)
    fig, axes = plt.subplots(max(1, len(rows)), cols, figsize=(1.3 * cols, 1.45 * max(1, len(rows))),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    col_of = {g: 0 for g in rows}
    for rec, g, p in tiles:
        ax = axes[rows.index(g), col_of[g]]
        col_of[g] += 1
        img = images.get((rec["shard"], rec["key"]))
        if img is not None:
            ax.imshow(np.asarray(img))
        ax.set_title(f"{classes[g]} -> {classes[p]}", fontsize=7, color="red" if g != p else "black")
    if not tiles:
        axes[0, 0].text(0.5, 0.5, "no samples", ha="center", va="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(write_curves(run))
