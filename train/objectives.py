"""Every training objective behind one signature: `objective(out, labels) -> (loss, stats)`,
with `out` the model's `Outputs` and `stats` a dict of detached scalar tensors (logged as
train_<name> in metrics.jsonl). The loop never branches on the method.

REGISTRY (bottom of this file) is the one place that names the objectives: the config's
--method choices and its check of which flags a method takes (train/config.py), the model
builder (train/setup.py) and rank_labels (tools/review/ranking.py: which network scores a
sample, with which norm) read what each entry declares. Adding an objective = one function and
one `register(Objective(...))`."""
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.limit import Outputs, limit_loss, sample_noise


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


# ---- soft regularization (the paper's eq. 8) and CE + gradient noise (GN / LN) ----------------
def softreg(out: Outputs, labels, lambda_: float = 0.01, beta: float = 0.0):
    """The paper's eq. 8, as the authors' PenalizeLastLayerFixedForm computes it:

    CE(a, y) + lambda * mean_i ||z_i||^2 ||onehot(y_i) - softmax(r_i)||^2
             + beta   * mean_i ||z_i||^2 ||softmax(a_i) - softmax(r_i)||^2

    z: the classifier's penultimate features (out.features, with their gradient), r: the
    auxiliary network's logits (out.aux). The lambda term is the cross-entropy H_{p,q} of the
    last layer's gradient (s(a) - onehot) z^T under q = N((s(a) - s(r)) z^T, I): the predictor
    learns to guess the label, the classifier can only shrink ||z||. beta penalizes the squared
    Frobenius norm of that predicted last-layer gradient, ||(s(a) - s(r)) z^T||^2 (the paper's
    beta ||mu||^2, taken at the last layer); no term is detached, as in the reference."""
    a, r, z = out.logits.float(), out.aux.float(), out.features.float()
    z_sq = z.flatten(1).square().sum(1)                                  # (B,)
    q = r.softmax(1)
    info = (z_sq * (F.one_hot(labels, a.shape[1]).float() - q).square().sum(1)).mean()
    mu_sq = (z_sq * (a.softmax(1) - q).square().sum(1)).mean()
    loss = F.cross_entropy(a, labels) + lambda_ * info + beta * mu_sq
    return loss, {"info_penalty": info.detach(), "mu_sq": mu_sq.detach(), "z_sq": z_sq.mean().detach()}


def ce_grad_noise(out: Outputs, labels, dist: str = "gaussian", sigma: float = 0.0):
    """CE + GN / LN: the gradient w.r.t. the logits becomes (softmax(a) - onehot(y) + n) / B with
    n independent zero-mean noise of per-logit standard deviation sigma (models.limit.sample_noise:
    Gaussian, or Laplace of scale sigma/sqrt(2)), through a surrogate term whose value is 0, so
    the loss reads as plain CE and AMP, accumulation and clipping stay correct. The reference
    code adds noise of std s to the gradient of the *mean* CE, (softmax - onehot) / B: its
    noise_std s is sigma / B here."""
    a = out.logits.float()
    n = sample_noise(a.detach(), dist, sigma)
    return F.cross_entropy(a, labels) + ((a - a.detach()) * n).sum(1).mean(), {}
# ---- end soft regularization and gradient noise ----------------------------------------------


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


# ---- the registry ----
@dataclass(frozen=True)
class Score:
    """How tools/rank_labels.py scores a sample of a run trained with the objective:
    ||onehot(y) - softmax(net(x))|| (docs/architecture.md section 2). net: "classifier", or
    "predictor" for LIMIT's gradient predictor (a second network that is not a label predictor,
    like softreg's auxiliary one, does not score); norm: "mse" (L2), "mae" (L1) or
    "predictor_loss" (the run's --predictor-loss, the distance its predictor was fitted with)."""
    net: str = "classifier"
    norm: str = "mse"

    def norm_for(self, cfg) -> str:
        return cfg.predictor_loss if self.norm == "predictor_loss" else self.norm

    def describe(self, cfg) -> str:
        """summary.json's "method": which network, which norm."""
        return f"{self.net} {self.norm_for(cfg)}"


@dataclass(frozen=True)
class Objective:
    """What an objective is and what it needs. `build(cfg, transition)` returns the
    `objective(out, labels)` callable; it reads only the flags of its own method."""
    name: str
    build: Callable
    second_net: str = ""          # "": the classifier alone; "predictor": LIMIT's gradient predictor
                                  # (--predictor network|head); "aux": an auxiliary backbone with the
                                  # classifier's features beside it (softreg)
    fine_tunes: bool = False      # starts from a CE model: --init-from is required
    transition: bool = False      # needs a noise transition matrix (FW: --transition or estimated)
    score: Score = Score()        # how rank_labels scores its samples
    flags: frozenset = frozenset()   # the config fields only this objective (and others that
                                  # list them too) reads: typed under another --method they would
                                  # be silently ignored, so train/config.py refuses them there
    doc: str = ""


REGISTRY: dict[str, Objective] = {}


def register(obj: Objective) -> Objective:
    REGISTRY[obj.name] = obj
    return obj


def _ce(cfg, transition=None):
    if cfg.grad_noise:                                   # CE + GN / LN
        return partial(ce_grad_noise, dist=cfg.grad_noise, sigma=cfg.grad_noise_sigma)
    return ce


# Flags no entry lists (--init-from, --recipe, the data, optimization and run flags) are every
# method's: --init-from starts LIMIT's networks or fine-tunes a baseline's classifier alike.
register(Objective("ce", _ce, flags=frozenset({"grad_noise", "grad_noise_sigma"}),
                   doc="cross-entropy (with --grad-noise: CE + GN / LN)"))
register(Objective("limit", lambda cfg, t=None: partial(limit, predictor_loss=cfg.predictor_loss, beta=cfg.beta,
                                                        sample=cfg.sample_dist if cfg.sample else "", sigma=cfg.sigma,
                                                        transition=t),
                   second_net="predictor", score=Score("predictor", "predictor_loss"),
                   flags=frozenset({"predictor", "predictor_model", "predictor_loss", "predictor_warmup", "beta",
                                    "sample", "sample_dist", "sigma", "init_target", "init_epochs", "init_patience",
                                    "predictor_transition"}),
                   doc="LIMIT: the classifier learns from predicted gradients"))
register(Objective("mae", lambda cfg, t=None: mae, doc="mean absolute error (Ghosh et al.)"))
register(Objective("gce", lambda cfg, t=None: partial(gce, q=cfg.gce_q), flags=frozenset({"gce_q"}),
                   doc="generalized CE (Zhang & Sabuncu)"))
register(Objective("fw", lambda cfg, t=None: partial(fw, transition=t), fine_tunes=True, transition=True,
                   flags=frozenset({"transition"}), doc="forward correction (Patrini et al.)"))
register(Objective("dmi", lambda cfg, t=None: dmi, fine_tunes=True, doc="determinant mutual information (Xu et al.)"))
# softreg's auxiliary network is built from --predictor-model (train/setup.py), its beta term is --beta
register(Objective("softreg", lambda cfg, t=None: partial(softreg, lambda_=cfg.softreg_lambda, beta=cfg.beta),
                   second_net="aux", flags=frozenset({"softreg_lambda", "beta", "predictor_model"}),
                   doc="the paper's soft regularization (eq. 8)"))


def make_objective(cfg, transition: torch.Tensor | None = None):
    """The objective for cfg.method (a train.config.Config)."""
    return REGISTRY[cfg.method].build(cfg, transition)
