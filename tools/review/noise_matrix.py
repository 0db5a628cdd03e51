"""Where the noise is: the label-noise transition matrix estimated from a run's scores, the
given label against the predictor's (or, for CE runs, the classifier's) label. Written into
rank_labels' summary.json and drawn by review_labels' page. Pure: arrays in, arrays out."""
import numpy as np

MIN_ROWS = 5          # a class's matrix row from fewer proxy samples is reported, not trusted


def confusion(rows: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    """counts[i, j] = #(rows == i and cols == j), ignoring entries outside 0..n-1."""
    ok = (rows >= 0) & (rows < n) & (cols >= 0) & (cols < n)
    return np.bincount(rows[ok] * n + cols[ok], minlength=n * n).reshape(n, n).astype(np.int64)


def transition_estimate(given: np.ndarray, proxy: np.ndarray, n: int, min_rows: int = MIN_ROWS) -> dict:
    """T[i, j] ~ P(given label = j | clean label = i), with the predictor's label standing in
    for the clean one: counts of (proxy i, given j), each row divided by its total.
    Calibration: none beyond that row normalization. The predictor's own mistakes spread mass
    over a row, and what it memorized of the given labels pulls mass onto the diagonal; rows
    with fewer than min_rows samples are NaN (not estimated) rather than guessed. Pure: arrays
    in, arrays out."""
    counts = confusion(np.asarray(proxy, np.int64), np.asarray(given, np.int64), n)
    totals = counts.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(totals >= max(min_rows, 1), counts / np.maximum(totals, 1), np.nan)
    rate = 1.0 - np.diag(t)
    off = np.where(np.eye(n, dtype=bool), -np.inf, np.nan_to_num(t, nan=-np.inf))
    pairs = sorted(((float(off[i, j]), i, j) for i in range(n) for j in range(n) if off[i, j] > 0), reverse=True)
    return {"matrix": t, "counts": counts, "noise_rate": rate,
            "pairs": [(i, j, v) for v, i, j in pairs]}


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float | None:
    """Mean |a - b| over the entries both define."""
    ok = ~(np.isnan(a) | np.isnan(b))
    return float(np.abs(a - b)[ok].mean()) if ok.any() else None


def noise_report(cols: dict, n: int, split: str) -> dict:
    """The estimate over all rows of label_scores.parquet (rank_labels scores one split, the
    train split by default), the true matrix where clean labels are known, and per class the
    estimated number of wrong given labels."""
    given, pp, cp = cols["label"], cols["predictor_pred"], cols["classifier_pred"]
    proxy = np.where(pp >= 0, pp, cp)               # CE runs: the classifier is the only head
    est = transition_estimate(given, proxy, n)
    known = cols["clean_label"] >= 0
    head = "predictor" if (pp >= 0).any() else "classifier"
    out = {"split": split, "proxy": head,
           "calibration": f"row-normalized counts of ({head}'s label, given label); no further calibration",
           "estimated": _rounded(est["matrix"]), "noise_rate": _rounded(est["noise_rate"]),
           "wrong_by_given": (est["counts"].sum(0) - np.diag(est["counts"])).tolist(),
           "pairs": [[i, j, round(v, 4)] for i, j, v in est["pairs"][:20]],
           "true": None, "true_noise_rate": None, "mae": None, "n_known": int(known.sum())}
    if known.any():
        true = transition_estimate(given[known], cols["clean_label"][known], n, 1)
        out.update(true=_rounded(true["matrix"]), true_noise_rate=_rounded(true["noise_rate"]),
                   mae=mean_abs_error(est["matrix"], true["matrix"]))
    return out


def _rounded(a: np.ndarray) -> list:
    return [None if np.isnan(v) else round(float(v), 4) for v in a] if a.ndim == 1 else [_rounded(r) for r in a]
