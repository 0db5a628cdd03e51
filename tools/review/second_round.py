"""The machine's second round: a fixes file decided from a run's label scores alone, in the
review page's format (key,index,given,decision,new_label), for `train/limit.py --label-fixes`.

Per scored sample (rank_labels' label_scores.parquet, the train split):
  relabel  the networks that judge the label all name one other class, and the score says the
           label is unlikely (score >= --relabel-min-score): the new label is that class;
  drop     the predictor (the classifier for runs without one) names another class but the
           evidence is not strong enough to relabel: the sample is left out of training;
  keep     the rest (nothing written: a fixes file lists decisions only).

The default threshold is stated for the score's norm (summary.json's "method"): with the L1
score 2(1 - q_y) it is 1.6, i.e. the predictor gives the given label at most 20%; with the L2
score, 1.0 (a label at most ~30% likely whose mass sits mostly on one other class). Only
train samples are ever scored, so validation and test labels are never changed."""
from dataclasses import dataclass

import numpy as np

DEFAULT_MIN_SCORE = {"mae": 1.6, "mse": 1.0}
COLUMNS = ["key", "index", "given", "decision", "new_label"]


@dataclass(frozen=True)
class Decisions:
    relabel: np.ndarray          # (N,) bool
    drop: np.ndarray             # (N,) bool
    new_label: np.ndarray        # (N,) int, -1 where not relabelled


def norm_of(summary: dict) -> str:
    """The score's norm from rank_labels' summary.json ("predictor mae", "classifier mse")."""
    method = str(summary.get("method", ""))
    return "mae" if method.endswith("mae") else "mse"


def decide(label: np.ndarray, classifier_pred: np.ndarray, predictor_pred: np.ndarray, score: np.ndarray,
           min_score: float, drop: bool = True) -> Decisions:
    """The three decisions above, as boolean columns. predictor_pred is -1 for runs without a
    predictor: the classifier is then the only judge."""
    judge = np.where(predictor_pred >= 0, predictor_pred, classifier_pred)
    agree = (classifier_pred == judge) & (judge != label)
    relabel = agree & (score >= min_score)
    dropped = (judge != label) & ~relabel if drop else np.zeros_like(relabel)
    return Decisions(relabel, dropped, np.where(relabel, judge, -1))


def rows(cols: dict, d: Decisions):
    """The fixes file's rows (relabel and drop only), in rank order."""
    pick = np.flatnonzero(d.relabel | d.drop)
    pick = pick[np.argsort(cols["rank"][pick], kind="stable")]
    for key, i in zip(cols["key"].take(pick).to_pylist(), pick):     # key: an Arrow array (read_scores)
        yield {"key": key, "index": int(cols["index"][i]), "given": int(cols["label"][i]),
               "decision": "relabel" if d.relabel[i] else "drop",
               "new_label": int(d.new_label[i]) if d.relabel[i] else ""}


def report(cols: dict, d: Decisions) -> dict:
    """Counts, and where clean labels are known (synthetic noise): how often a relabel is right,
    how many dropped labels were wrong, and how many wrong labels remain."""
    clean, label = cols["clean_label"], cols["label"]
    known = clean >= 0
    out = {"scored": int(len(label)), "relabel": int(d.relabel.sum()), "drop": int(d.drop.sum()),
           "keep": int(len(label) - d.relabel.sum() - d.drop.sum())}
    if known.any():
        wrong = known & (label != clean)
        r, dr = d.relabel & known, d.drop & known
        fixed = np.where(d.relabel, d.new_label, label)
        out.update({
            "relabel_precision": round(float((d.new_label[r] == clean[r]).mean()), 4) if r.any() else None,
            "drop_wrong_fraction": round(float(wrong[dr].mean()), 4) if dr.any() else None,
            "wrong_before": round(float(wrong[known].mean()), 4),
            "wrong_after": round(float((known & ~d.drop & (fixed != clean))[known].sum() /
                                       max(1, int((known & ~d.drop).sum()))), 4)})
    return out
