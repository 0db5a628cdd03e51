"""LIMIT (Harutyunyan et al., ICML 2020): the classifier learns from a gradient that an
auxiliary network predicts without seeing labels.

One module holds both networks so that a training step is one forward call, one backward of
one loss and, under DDP, one wrapper with one bucketed all-reduce. The loss is a surrogate
(no custom autograd function): its gradient w.r.t. the classifier's logits is exactly the
predicted gradient divided by the batch size, so fp16 loss scaling, gradient accumulation,
clipping and accelerate's backward all compose with it."""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import penultimate


class Outputs(NamedTuple):
    logits: torch.Tensor                 # (B, K) classifier
    aux: torch.Tensor | None = None      # (B, K) gradient predictor r(x), None without one
    features: torch.Tensor | None = None # (B, F) classifier penultimate features (head mode)


class PredictorHead(nn.Module):
    """The cheap predictor: an MLP on the classifier's penultimate features."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 0):
        super().__init__()
        hidden = hidden or min(in_features, 512)
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class FusedNet(nn.Module):
    """A classifier and, for the objectives that have one, a second network, fused into one
    forward (one DDP wrapper, one backward). mode: "none" (the classifier alone: CE and the
    baselines), "network" (a second backbone reads the image: LIMIT's gradient predictor,
    softreg's auxiliary network) or "head" (a head reads the classifier's *detached* features,
    so no gradient of the label-dependent predictor loss reaches the classifier's trunk)."""

    def __init__(self, classifier: nn.Module, predictor: nn.Module | None = None, mode: str = "none",
                 with_features: bool = False):
        super().__init__()
        assert mode in ("none", "network", "head") and (predictor is None) == (mode == "none")
        self.classifier, self.predictor, self.mode = classifier, predictor, mode
        # softreg (eq. 8) penalizes ||z||^2, so it needs the classifier's penultimate features
        # *with* their gradient beside the auxiliary network's logits (network mode)
        self.with_features = with_features

    def forward(self, x: torch.Tensor) -> Outputs:
        if self.mode == "head":
            feats, logits = penultimate(self.classifier, x)
            return Outputs(logits, self.predictor(feats.detach()), feats)
        aux = self.predictor(x) if self.mode == "network" else None
        if self.with_features:                                           # softreg
            feats, logits = penultimate(self.classifier, x)
            return Outputs(logits, aux, feats)
        return Outputs(self.classifier(x), aux)


def limit_loss(logits: torch.Tensor, aux: torch.Tensor, labels: torch.Tensor, *,
               predictor_loss: str = "mae", beta: float = 0.0, sample: str = "",
               sigma: float = 0.0, transition: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The one LIMIT objective.

    mu = softmax(a).detach() - softmax(r)       predicted gradient w.r.t. the logits a
    L  = mean_i <a_i, g_i>                      g = mu.detach() (+ noise with sampling):
                                                dL/da = g / B, the scale of mean CE
       + mean_i dist(mu_i, softmax(a_i) - onehot(y_i))   predictor fits the true gradient
       + beta * mean_i ||mu_i||^2               keeps the predictor from memorizing

    dist is the squared L2 norm (LIMIT_G, "mse") or the L1 norm (LIMIT_L, "mae"); since
    mu - (softmax(a) - onehot) = onehot - softmax(r), it only involves the predictor.
    With `transition` T (K, K), T[c, j] = P(given j | clean c), the predictor fits the given
    label through the noise, dist(onehot, softmax(r) @ T) (forward correction, Patrini et al.):
    softmax(r) then estimates the clean label's distribution, not the noisy one, and that is
    what the classifier moves towards (--predictor-transition; docs/architecture.md section 2).
    The reference code *sums* the classifier's gradient over the batch: with SGD, multiply
    the learning rate by B to match it; Adam is (almost) invariant to the scale.
    Softmaxes run in float32 so bf16/fp16 autocast does not round the small differences."""
    a, r = logits.float(), aux.float()
    p, q = a.softmax(1), r.softmax(1)
    onehot = F.one_hot(labels, a.shape[1]).float()
    mu = p.detach() - q                                              # (B, K)
    g = mu.detach()
    if sample:
        g = g + sample_noise(g, sample, sigma)
    err = onehot - (q if transition is None else q @ transition.to(q.device, q.dtype))
    fit = (err.square() if predictor_loss == "mse" else err.abs()).sum(1).mean()
    mu_sq = mu.square().sum(1).mean()
    loss = (a * g).sum(1).mean() + fit + beta * mu_sq
    return loss, {"predictor_loss": fit.detach(), "mu_sq": mu_sq.detach()}


def sample_noise(like: torch.Tensor, dist: str, sigma: float) -> torch.Tensor:
    """Zero-mean noise with per-component variance sigma^2 (Laplace scale sigma/sqrt(2), as
    in the paper's appendix, so both distributions have the same second moment)."""
    if dist == "gaussian":
        return torch.randn_like(like) * sigma
    # inverse-CDF Laplace; rand can return exactly 0, whose log1p(-1) = -inf would turn the
    # whole step's gradient into NaN, so u stays inside the open interval (-1/2, 1/2)
    u = torch.rand_like(like).clamp_min(torch.finfo(like.dtype).eps) - 0.5
    return -sigma / math.sqrt(2) * u.sign() * torch.log1p(-2 * u.abs())
