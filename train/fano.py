"""The information report of Harutyunyan et al. (ICML 2020), Theorem 2.1 / Fig. A0: the
smallest training error rate r0 that any algorithm whose weights retain I bits of label-noise
information per sample, I = I(w : y | x) / n, must make on the given (noisy) labels.

    python tools/fano_bound.py --classes 10 --noise 0.8                     # r0 = 0.800
    python tools/fano_bound.py --classes 10 --noise 0.8 --bits-per-sample 1 # r0 = 0.405
(the command line lives in tools/fano_bound.py; the math here, for the trainer and the tools)

Fano's inequality per sample, summed (eq. 12 of the appendix), with k classes and entropies
in bits:

    r >= (H(y | x) - I - H_b(r)) / log2(k - 1)

r0 is the smallest r in [0, 1] that satisfies it; f(r) = r log2(k-1) + H_b(r) rises on
[0, (k-1)/k] up to log2(k) >= H(y | x), so r0 is the root of f(r) = H(y | x) - I there
(bisection; for k = 2, Remark 2: H_b(r0) = H(y | x) - I). The inverse, for a measured training
error r, is the least label-noise information the weights must hold:
I >= H(y | x) - H_b(r) - r log2(k - 1) bits per sample.

H(y | x) comes from the noise model: with a transition matrix T[c, k] = P(given k | clean c)
and clean labels a function of the image, H(y | x) = sum_c prior_c H(T[c]). Uniform noise
(the label is kept w.p. 1-p, else uniform over the other k-1 classes) gives
H(y | x) = H_b(p) + p log2(k - 1), and r0 = p when I = 0 (Remark 3). Where the clean label is
itself uncertain given x the true H(y | x) is larger and r0 only grows: the number printed is
still a valid lower bound.

Pure math (numpy only), so the trainer and other tools can import it."""
import math

import numpy as np


def binary_entropy(r: float) -> float:
    """H_b(r) in bits; 0 at r = 0 and r = 1."""
    if r <= 0.0 or r >= 1.0:
        return 0.0
    return -r * math.log2(r) - (1.0 - r) * math.log2(1.0 - r)


def entropy(p) -> float:
    """Shannon entropy in bits of a probability vector (zeros contribute nothing)."""
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def uniform_matrix(k: int, p: float) -> np.ndarray:
    """Keep the label w.p. 1-p, else one of the other k-1 classes uniformly."""
    return (1 - p) * np.eye(k) + p / (k - 1) * (1 - np.eye(k))


def noise_entropy(matrix, prior=None) -> float:
    """H(y | x) in bits for clean labels that are a function of x and given labels drawn from
    row T[clean] of `matrix`; `prior` over clean classes defaults to uniform."""
    t = np.asarray(matrix, dtype=np.float64)
    prior = np.full(len(t), 1.0 / len(t)) if prior is None else np.asarray(prior, dtype=np.float64)
    return float(sum(w * entropy(row) for w, row in zip(prior, t)))


def uniform_noise_entropy(k: int, p: float) -> float:
    """H(y | x) = H_b(p) + p log2(k - 1) for uniform noise."""
    return binary_entropy(p) + p * math.log2(k - 1)


def fano_r0(label_entropy_bits: float, k: int, bits_per_sample: float = 0.0) -> float:
    """Smallest training error rate r0 allowed by eq. 12 for k classes, H(y | x) =
    `label_entropy_bits` and I(w : y | x) / n = `bits_per_sample`."""
    if k < 2:
        raise ValueError(f"need at least 2 classes, got {k}")
    if bits_per_sample < 0:
        raise ValueError(f"bits per sample must be >= 0, got {bits_per_sample}")
    target = label_entropy_bits - bits_per_sample
    if target <= 0:
        return 0.0
    log_k1 = math.log2(k - 1)
    hi = (k - 1) / k                       # f rises on [0, hi]; f(hi) = log2(k) >= H(y | x)

    def f(r):
        return r * log_k1 + binary_entropy(r) - target
    if f(hi) <= 0:                         # only when H(y | x) - I >= log2 k: every guess fails
        return hi
    lo = 0.0
    for _ in range(200):                   # bisection to float precision
        mid = 0.5 * (lo + hi)
        if f(mid) >= 0:
            hi = mid
        else:
            lo = mid
        if hi - lo < 1e-15:
            break
    return hi


def min_bits_per_sample(label_entropy_bits: float, k: int, train_error: float) -> float:
    """The least label-noise information per sample, in bits, that weights with training error
    rate `train_error` against the given labels must hold (eq. 12 solved for I; >= 0)."""
    log_k1 = math.log2(k - 1) if k > 2 else 0.0
    return max(0.0, label_entropy_bits - binary_entropy(train_error) - train_error * log_k1)


def r0_uniform(k: int, p: float, bits_per_sample: float = 0.0) -> float:
    """r0 for uniform noise of rate p on k classes (the paper's Fig. A0)."""
    if not 0 <= p <= 1:
        raise ValueError(f"noise rate must lie in [0, 1], got {p}")
    return fano_r0(uniform_noise_entropy(k, p), k, bits_per_sample)


def run_summary(matrix, train_acc: float | None, prior=None) -> dict:
    """The report a training run's summary carries: r0 for its noise model (no label-noise
    information in the weights), the measured training error against the given labels, and
    the bits per sample that error proves the weights memorized (0 when error >= r0)."""
    t = np.asarray(matrix, dtype=np.float64)
    k, h = len(t), noise_entropy(t, prior)
    out = {"fano_label_entropy_bits": h, "fano_r0": fano_r0(h, k)}
    if train_acc is not None:
        err = 1.0 - float(train_acc)
        out["train_err_last"] = err
        out["fano_min_bits_per_sample"] = min_bits_per_sample(h, k, err)
    return out
