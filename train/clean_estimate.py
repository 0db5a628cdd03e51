"""Accuracy on clean labels, estimated from a noisily labelled split (issue 26 item 4), and the
noise transition matrix T it rests on: its anchor estimate, the check of a T read back from a
meta.json, and how structured its noise is (--predictor-transition auto, train/init_phase.py).

With class-conditional noise (the given label depends on the clean label only, not on the
image), a model's prediction and the given label are independent given the clean label, so

    J_given[i, j] = P(pred = i, given = j) = sum_c P(pred = i, clean = c) T[c, j]
    J_given = J_clean @ T          =>        J_clean = J_given @ inv(T)

and the clean accuracy is trace(J_clean). T[c, j] = P(given = j | clean c) is read off anchors:
the samples the model is most sure are of class c (by p(c | x), as many as ANCHOR_SHARE of a
class's expected size N / K) stand in for clean members of c, and the *given labels* among them are counted for
T's row. Only the ranking of the model's probabilities is used, not their values: the
inversion amplifies an error in T's diagonal by 1 / (T[c, c] - T[c, j]), 3x at 60% uniform noise,
and the probabilities of a model trained on noisy labels are over-confident exactly at its
anchors (Patrini et al.'s rule, the mean of p(given | x) over the anchors, underestimated the
clean accuracy by 0.06-0.10 on MNIST; RESULTS.md, "Accuracy without clean labels"). The
counts' own sampling error is what remains: the estimate comes with a standard error from a
parametric bootstrap of the anchor counts, and none is given above MAX_SE.

The *model's* probabilities at the anchors (anchor_transition) are still what
--predictor-transition fits through (train/init_phase.py): a smooth T whose off-diagonal
structure is not counting noise, usable only from a model calibrated against the given labels
(MAX_CALIBRATION_GAP).

Where it breaks: instance-dependent noise (the independence above fails), a T that is near
singular (noise at or above (K-1)/K, or two classes that swap most of their labels: the
condition number is reported, and above MAX_CONDITION no estimate is given), too few anchors
for the noise (MAX_SE: at 80% uniform noise on 12,000 validation samples the standard error
exceeds 1) and a model whose most confident samples are wrong (anchors from the wrong class:
the estimate then sees model errors as label noise and overestimates)."""
import numpy as np


MAX_CONDITION = 100.0     # above this, inv(T) multiplies the counting noise of J beyond use
# Anchors per class: this share of a class's expected size N / K, at least MIN_ANCHORS. More
# anchors count T's rows more precisely but reach deeper into the model's errors (which look like
# label noise); measured over 28 runs of the quality matrix (12,000 validation samples, K = 10):
# a share of 0.05 gave a median |error| of 0.022, 0.1 0.015, 0.2 0.019, 0.5 0.032.
ANCHOR_SHARE = 0.1
MIN_ANCHORS = 30
MAX_SE = 0.1              # an estimate +-0.1 or worse says nothing a user can act on
BOOTSTRAP = 200           # draws for the standard error (seeded: the same outputs give the same SE)
# The rule's T (anchor_transition) needs probabilities of the *given* label: a model whose mean
# top probability exceeds its accuracy against the given labels by more than this is sharper
# than the noise allows (LIMIT_L's predictor, a model trained on fixed labels) and hands back no
# matrix. Measured on validation: CE selected early 0.365 vs 0.336, LIMIT_G 0.352 vs 0.338; a
# second-round model 0.874 vs 0.342 and LIMIT_L at MNIST p=0.8 0.903 vs 0.190.
MAX_CALIBRATION_GAP = 0.1


def clean_accuracy(pred: np.ndarray, given: np.ndarray, transition: np.ndarray) -> tuple[float | None, float]:
    """(estimated clean accuracy or None, condition number of T). pred, given: (N,) class
    indices; transition: (K, K), rows summing to 1."""
    k = transition.shape[0]
    ok = (given >= 0) & (given < k) & (pred >= 0) & (pred < k)
    if not ok.any():
        return None, float("inf")
    return through(joint_counts(pred[ok], given[ok], k) / ok.sum(), transition)


def through(joint: np.ndarray, transition: np.ndarray) -> tuple[float | None, float]:
    """trace(joint @ inv(T)) clipped to [0, 1], or None when T is near singular; and T's
    condition number."""
    cond = float(np.linalg.cond(transition))
    if not np.isfinite(cond) or cond > MAX_CONDITION:
        return None, cond
    return float(np.clip(np.trace(joint @ np.linalg.inv(transition)), 0.0, 1.0)), cond


def joint_counts(rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """(K, K) counts of the pairs (rows[i], cols[i])."""
    return np.bincount(rows * k + cols, minlength=k * k).reshape(k, k).astype(np.float64)


def anchor_counts(probs: np.ndarray, given: np.ndarray) -> np.ndarray:
    """(K, K): row c counts the given labels of the m samples with the highest p(c | x), m =
    ANCHOR_SHARE of N / K (at least MIN_ANCHORS, at most N). A partition per class, not a sort
    of the whole (N, K) array."""
    n, k = probs.shape
    m = min(n, max(MIN_ANCHORS, int(n / k * ANCHOR_SHARE)))
    counts = np.zeros((k, k))
    for c in range(k):
        top = np.argpartition(-probs[:, c], m - 1)[:m] if m < n else np.arange(n)
        counts[c] = np.bincount(given[top], minlength=k)
    return counts


def standard_error(joint: np.ndarray, counts: np.ndarray) -> float:
    """The estimate's spread over redraws of the anchor counts (each row multinomial with its
    own total and frequencies), drawn and inverted as one batch. A redrawn T near singular
    swings its estimate far, and so the spread: no separate condition check is needed; an
    exactly singular one gives inf. BOOTSTRAP draws, fewer for large K so that the batch of
    K x K matrices stays under ~160 MB (20 at K = 1,000)."""
    k = len(counts)
    draws = int(min(BOOTSTRAP, max(20, 2e7 // k ** 2)))
    totals = counts.sum(1).astype(np.int64)
    t = np.random.default_rng(0).multinomial(totals, counts / totals[:, None], size=(draws, k)) / totals[:, None]
    try:
        return float(np.std(np.einsum("ij,bji->b", joint, np.linalg.inv(t))))
    except np.linalg.LinAlgError:
        return float("inf")


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
    """The estimate from a split's softmax outputs (N, K) and given labels (N,): the clean
    accuracy through the counted T (None when T is near singular, MAX_CONDITION, or the
    standard error exceeds MAX_SE), its standard error, T's condition number, and the model's
    anchor T for --predictor-transition (None unless the probabilities are calibrated against
    the given labels, MAX_CALIBRATION_GAP, and that T is invertible)."""
    given = np.asarray(given, np.int64)
    k = probs.shape[1]
    ok = (given >= 0) & (given < k)
    probs, given = probs[ok], given[ok]
    none = {"acc_clean_est": None, "acc_clean_est_se": None, "transition_condition": None, "transition": None}
    if not len(given):
        return none
    counts = anchor_counts(probs, given)
    pred = probs.argmax(1)
    joint = joint_counts(pred, given, k) / len(given)
    acc, cond = through(joint, counts / counts.sum(1, keepdims=True))
    se = standard_error(joint, counts) if acc is not None else None
    if se is not None and not se <= MAX_SE:
        acc = None
    gap = float(probs.max(1).mean() - (pred == given).mean())
    model_t = anchor_transition(probs) if gap <= MAX_CALIBRATION_GAP else None
    if model_t is not None and not np.linalg.cond(model_t) <= MAX_CONDITION:
        model_t = None
    return {"acc_clean_est": acc, "acc_clean_est_se": round(se, 4) if se is not None and np.isfinite(se) else None,
            "transition_condition": round(cond, 2) if np.isfinite(cond) else None, "transition": model_t}


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
