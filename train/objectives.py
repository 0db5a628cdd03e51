"""Every training objective behind one signature: `objective(out, labels) -> (loss, stats)`,
with `out` the model's `Outputs` and `stats` a dict of detached tensors. The loop never
branches on the method."""
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from models.limit import Outputs, limit_loss


def ce(out: Outputs, labels):
    return F.cross_entropy(out.logits.float(), labels), {}


def mae(out: Outputs, labels):
    """||onehot - softmax||_1 = 2 - 2 p_y (Ghosh et al.): bounded, so noise-robust, slow."""
    p_y = out.logits.float().softmax(1).gather(1, labels[:, None]).squeeze(1)
    return (2 - 2 * p_y).mean(), {}


def gce(out: Outputs, labels, q: float = 0.7):
    """Generalized cross-entropy (Zhang & Sabuncu 2018): (1 - p_y^q) / q."""
    p_y = out.logits.float().softmax(1).gather(1, labels[:, None]).squeeze(1)
    return ((1 - p_y.clamp_min(1e-12) ** q) / q).mean(), {}


def fw(out: Outputs, labels, transition: torch.Tensor):
    """Forward correction (Patrini et al. 2017): CE on softmax(a) @ T, T[c, k] = P(k | c)."""
    noisy = out.logits.float().softmax(1) @ transition.to(out.logits.device, torch.float32)
    return F.nll_loss(noisy.clamp_min(1e-12).log(), labels), {}


def dmi(out: Outputs, labels):
    """Determinant-based mutual information (Xu et al. 2019): -log|det(onehot^T softmax)|,
    unnormalized with +1e-3 inside the log, as in the authors' code."""
    p = out.logits.float().softmax(1)
    joint = F.one_hot(labels, p.shape[1]).float().t() @ p           # (K, K)
    return -torch.log(torch.linalg.det(joint).abs() + 1e-3), {}


def limit(out: Outputs, labels, **kw):
    return limit_loss(out.logits, out.aux, labels, **kw)


def estimate_transition(probs: np.ndarray, percentile: float = 97.0) -> np.ndarray:
    """Patrini et al.'s anchor rule: for class i take the sample at the `percentile` of
    p(i | x) over the data as a near-certain member of i; row i of T is its prediction."""
    k = probs.shape[1]
    t = np.zeros((k, k))
    for i in range(k):
        col = probs[:, i]
        thresh = np.percentile(col, percentile, method="higher")
        anchor = np.argmin(np.abs(col - thresh))
        t[i] = probs[anchor]
    return t / t.sum(1, keepdims=True)


def make_objective(cfg, transition: torch.Tensor | None = None):
    """The objective for cfg.method (a train.config.Config)."""
    if cfg.method == "limit":
        return partial(limit, predictor_loss=cfg.predictor_loss, beta=cfg.beta,
                       sample=cfg.sample_dist if cfg.sample else "", sigma=cfg.sigma)
    if cfg.method == "gce":
        return partial(gce, q=cfg.gce_q)
    if cfg.method == "fw":
        return partial(fw, transition=transition)
    return {"ce": ce, "mae": mae, "dmi": dmi}[cfg.method]
