"""Accuracy on clean labels, estimated from a noisily labelled split (issue 26 item 4), and the
noise transition matrix T it rests on: its anchor estimate, the check of a T read back from a
meta.json, and how structured its noise is (--predictor-transition auto, train/init_phase.py).

With class-conditional noise (the given label depends on the clean label only, not on the
image), a model's prediction and the given label are independent given the clean label, so

    J_given[i, j] = P(pred = i, given = j) = sum_c P(pred = i, clean = c) T[c, j]
    J_given = J_clean @ T          =>        J_clean = J_given @ inv(T)

and the clean accuracy is trace(J_clean). T[c, j] = P(given = j | clean = c) is estimated by
Patrini et al.'s anchor rule from the model's own probabilities on the same split: the samples
the model is nearly sure are of class c stand in for clean members of c, and their predicted
distribution over the *given* labels is T's row. Patrini takes the one sample at the 97th
percentile of p(c | x); one sample's probabilities move by several points from epoch to epoch,
and the estimate with them (measured: 0.80 -> 0.94 -> 0.80 on consecutive CE epochs), so here
the row is the mean over the band between the 95th and 99th percentiles. That
needs probabilities that estimate P(given | x), which a classifier selected on noisy validation
(not yet memorizing) gives; the row-normalized (prediction, given) counts that rank_labels
reports cannot be used here: with the model's labels as the clean proxy the inversion returns
an accuracy of 1 by construction.

Where it breaks (RESULTS.md, "Accuracy without clean labels"): instance-dependent noise (the
independence above fails), a T that is near singular (noise at or above (K-1)/K, or two
classes that swap most of their labels: the condition number is reported, and above
MAX_CONDITION no estimate is given), probabilities sharper than the given labels warrant
(MAX_CALIBRATION_GAP: no estimate) and a model whose confident samples are wrong (anchors from
the wrong class)."""
import numpy as np


MAX_CONDITION = 100.0     # above this, inv(T) multiplies the counting noise of J beyond use
# The anchors need probabilities of the *given* label: a model whose mean top probability
# exceeds its accuracy against the given labels by more than this is sharper than the noise
# allows (LIMIT_L's predictor, a model trained on fixed labels) and gets no estimate. Measured
# on validation: CE selected early 0.365 vs 0.336, LIMIT_G 0.352 vs 0.338 (estimates within
# 0.06 and 0.03); a second-round model 0.874 vs 0.342 and LIMIT_L at MNIST p=0.8 0.903 vs
# 0.190 (estimates off by 0.50 and 0.78).
MAX_CALIBRATION_GAP = 0.1


def clean_accuracy(pred: np.ndarray, given: np.ndarray, transition: np.ndarray) -> tuple[float | None, float]:
    """(estimated clean accuracy or None, condition number of T). pred, given: (N,) class
    indices; transition: (K, K), rows summing to 1."""
    k = transition.shape[0]
    ok = (given >= 0) & (given < k) & (pred >= 0) & (pred < k)
    if not ok.any():
        return None, float("inf")
    joint = np.bincount(pred[ok] * k + given[ok], minlength=k * k).reshape(k, k) / ok.sum()   # (K, K)
    cond = float(np.linalg.cond(transition))
    if not np.isfinite(cond) or cond > MAX_CONDITION:
        return None, cond
    est = float(np.trace(joint @ np.linalg.inv(transition)))
    return float(np.clip(est, 0.0, 1.0)), cond


def anchor_transition(probs: np.ndarray, low: float = 95.0, high: float = 99.0) -> np.ndarray:
    """T's rows: for each class c the mean of probs over the samples whose p(c | x) lies between
    the `low` and `high` percentiles of p(c | x) (the samples the model is nearly sure of,
    without the most extreme ones, which over-confidence reaches first). (N, K) -> (K, K)."""
    k = probs.shape[1]
    t = np.zeros((k, k))
    for c in range(k):
        col = probs[:, c]
        lo, hi = np.percentile(col, [low, high])
        band = (col >= lo) & (col <= hi)
        t[c] = probs[band].mean(0) if band.any() else probs[np.argmax(col)]
    return t / t.sum(1, keepdims=True)


def estimate(probs: np.ndarray, given: np.ndarray) -> dict:
    """The estimate from a split's softmax outputs (N, K) and given labels (N,), with the anchor
    T it used (None with the estimate: probabilities not calibrated against the given labels,
    MAX_CALIBRATION_GAP, or T too near singular, MAX_CONDITION)."""
    given = np.asarray(given, np.int64)
    gap = float(probs.max(1).mean() - (probs.argmax(1) == given).mean())
    if gap > MAX_CALIBRATION_GAP:
        return {"acc_clean_est": None, "transition_condition": None, "transition": None}
    transition = anchor_transition(probs)
    acc, cond = clean_accuracy(probs.argmax(1), given, transition)
    return {"acc_clean_est": acc, "transition_condition": round(cond, 2) if np.isfinite(cond) else None,
            "transition": transition if acc is not None else None}


def transition_problem(t) -> str | None:
    """What is wrong with a transition matrix as JSON gives it back (a meta.json may come from a
    stranger), or None: None itself, or K x K (2 <= K <= 100,000) finite numbers in [0, 1] whose
    rows sum to 1 within 1e-3."""
    if t is None:
        return None
    if (not isinstance(t, list) or not 2 <= len(t) <= 100_000
            or any(not isinstance(row, list) or len(row) != len(t) for row in t)):
        return "is not a square list of lists"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for row in t for v in row):
        return "holds something other than numbers"
    arr = np.asarray(t, dtype=np.float64)
    if not np.isfinite(arr).all() or (arr < 0).any() or (arr > 1).any() or np.abs(arr.sum(1) - 1).max() > 1e-3:
        return "has entries outside [0, 1] or rows that do not sum to 1"
    return None


def noise_structure(t) -> float:
    """How concentrated a transition matrix's noise is: 0 when each class's wrong labels spread
    evenly over the other classes (uniform noise), 1 when they all go to one other class (pair
    noise). The share of the off-diagonal mass that sits in each row's largest off-diagonal
    entry, rescaled from [1/(K-1), 1] to [0, 1]; 0 for None, K = 2 or a noiseless T."""
    if t is None:
        return 0.0
    t = np.asarray(t, dtype=np.float64)
    k = t.shape[0]
    off = t - np.diag(np.diag(t))
    if k < 3 or off.sum() <= 0:
        return 0.0
    share = off.max(1).sum() / off.sum()
    return float(np.clip((share - 1 / (k - 1)) / (1 - 1 / (k - 1)), 0.0, 1.0))
