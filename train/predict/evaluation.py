"""The evaluation report of predictions against labels: accuracy on the given and on the clean
labels, per-class precision and recall, the confusion matrix, expected calibration error.

Numbers are plain numpy over the top-1 class and its probability (train.predict.infer); the
figures use matplotlib's Figure directly (no pyplot: no global state, no display)."""
import csv
import io

import numpy as np
from matplotlib.figure import Figure

from pipeline.csv_cells import neutralize

ECE_BINS = 15          # equal-width confidence bins, the usual choice (Guo et al., ICML 2017)


def confusion(label: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """(K, K) int64 counts: row = label, column = prediction; rows with label < 0 left out."""
    known = label >= 0
    return np.bincount(label[known] * k + pred[known], minlength=k * k).reshape(k, k)


def per_class(cm: np.ndarray, classes: list[str]) -> list[dict]:
    """Precision, recall and support per class; None where undefined (nothing predicted as the
    class, or no sample of it)."""
    tp, predicted, support = np.diag(cm), cm.sum(0), cm.sum(1)
    div = lambda a, b: float(a / b) if b else None  # noqa: E731
    return [{"class": name, "precision": div(tp[c], predicted[c]), "recall": div(tp[c], support[c]),
             "support": int(support[c])} for c, name in enumerate(classes)]


def calibration(conf: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error over equal-width bins of the top-1 probability:
    sum over bins of (samples in bin / N) * |accuracy in bin - mean confidence in bin|.
    A confidence of exactly 1 falls in the last bin, 0 in the first."""
    which = np.minimum((conf * bins).astype(np.int64), bins - 1)
    n = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    mean_conf = np.bincount(which, weights=conf.astype(np.float64), minlength=bins)
    nz = n > 0
    acc[nz] /= n[nz]
    mean_conf[nz] /= n[nz]
    ece = float(np.sum(n[nz] / max(len(conf), 1) * np.abs(acc[nz] - mean_conf[nz])))
    return {"ece": ece, "bins": bins, "count": n.tolist(),
            "accuracy": [float(a) if c else None for a, c in zip(acc, n)],
            "confidence": [float(m) if c else None for m, c in zip(mean_conf, n)]}


def evaluate(label, clean, top_class, top_prob, classes: list[str]) -> dict | None:
    """The report's numbers, or None when no sample has a given label."""
    known = label >= 0
    if not known.any():
        return None
    pred, conf = top_class[:, 0].astype(np.int64), top_prob[:, 0]
    k = len(classes)
    cm = confusion(label, pred, k)
    hit = pred[known] == label[known]
    top_k = (top_class[known] == label[known, None]).any(1)
    report = {"n": int(known.sum()), "accuracy": float(hit.mean()),
              f"top{top_class.shape[1]}_accuracy": float(top_k.mean()),
              "per_class": per_class(cm, classes), "confusion": cm.tolist(),
              "calibration": calibration(conf[known], hit)}
    has_clean = clean >= 0
    if has_clean.any():
        on_clean = pred[has_clean] == clean[has_clean]
        report |= {"n_clean": int(has_clean.sum()), "accuracy_clean": float(on_clean.mean()),
                   "ece_clean": calibration(conf[has_clean], on_clean)["ece"],
                   # how far the given labels are from the clean ones on this split
                   "given_equals_clean": float((label[has_clean & known] == clean[has_clean & known]).mean())
                   if (has_clean & known).any() else None}
    return report


def confusion_csv(cm: np.ndarray, classes: list[str]) -> str:
    """The table: one row per given label, one column per prediction, counts. Class names are
    a stranger's folder names: neutralized as every CSV cell is (pipeline/csv_cells.py)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["label \\ predicted", *map(neutralize, classes)])
    for name, row in zip(classes, cm):
        w.writerow([neutralize(name), *(int(v) for v in row)])
    return buf.getvalue()


def confusion_figure(cm: np.ndarray, classes: list[str]) -> Figure:
    """Rows normalized to the label's count (recall on the diagonal); counts written in the
    cells while the matrix is small enough to read them."""
    k = len(classes)
    side = min(2 + 0.45 * k, 24)
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    rows = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(rows, vmin=0, vmax=1, cmap="Blues")
    fig.colorbar(im, ax=ax, label="fraction of the label's samples")
    ticks = range(k) if k <= 50 else []
    ax.set_xticks(list(ticks), [classes[i] for i in ticks], rotation=90, fontsize=7)
    ax.set_yticks(list(ticks), [classes[i] for i in ticks], fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if rows[i, j] > 0.5 else "black")
    return fig


def reliability_figure(cal: dict) -> Figure:
    """Accuracy against mean confidence per bin, with the diagonal of perfect calibration and
    the share of samples per bin underneath."""
    fig = Figure(figsize=(5, 6), layout="constrained")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    b = cal["bins"]
    edges = np.linspace(0, 1, b + 1)
    acc = [a if a is not None else 0.0 for a in cal["accuracy"]]
    top.bar(edges[:-1], acc, width=1 / b, align="edge", edgecolor="black", label="accuracy")
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_title(f"reliability (ECE {cal['ece']:.4f})")
    top.legend(loc="lower right")
    n = np.asarray(cal["count"], dtype=float)
    bottom.bar(edges[:-1], n / max(n.sum(), 1), width=1 / b, align="edge", edgecolor="black", color="gray")
    bottom.set_xlabel("top-1 probability")
    bottom.set_ylabel("share")
    return fig
