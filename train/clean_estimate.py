"""Accuracy on clean labels, estimated from a noisily labelled split (issue 26 item 4).

With class-conditional noise (the given label depends on the clean label only, not on the
image), a model's prediction and the given label are independent given the clean label, so

    J_given[i, j] = P(pred = i, given = j) = sum_c P(pred = i, clean = c) T[c, j]
    J_given = J_clean @ T          =>        J_clean = J_given @ inv(T)

and the clean accuracy is trace(J_clean). T[c, j] = P(given = j | clean = c) is estimated by
Patrini et al.'s anchor rule (train.objectives.estimate_transition) from the model's own
probabilities on the same split: for each class the sample the model is nearly sure of stands
in for a clean member, and its predicted distribution over the *given* labels is T's row. That
needs probabilities that estimate P(given | x), which a classifier selected on noisy validation
(not yet memorizing) gives; the row-normalized (prediction, given) counts that rank_labels
reports cannot be used here: with the model's labels as the clean proxy the inversion returns
an accuracy of 1 by construction.

Where it breaks (RESULTS.md, "Accuracy without clean labels"): instance-dependent noise (the
independence above fails), a T that is near singular (noise at or above (K-1)/K, or two
classes that swap most of their labels: the condition number is reported, and above
MAX_CONDITION no estimate is given) and a model whose confident samples are wrong (anchors from
the wrong class)."""
import numpy as np

from train.objectives import estimate_transition

MAX_CONDITION = 100.0     # above this, inv(T) multiplies the counting noise of J beyond use


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


def estimate(probs: np.ndarray, given: np.ndarray) -> dict:
    """The estimate from a split's softmax outputs (N, K) and given labels (N,)."""
    transition = estimate_transition(probs)
    acc, cond = clean_accuracy(probs.argmax(1), np.asarray(given, np.int64), transition)
    return {"acc_clean_est": acc, "transition_condition": round(cond, 2) if np.isfinite(cond) else None}
