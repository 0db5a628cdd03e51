"""The baselines behind the objective signature: CE, MAE, GCE, FW (and its transition-matrix
estimate), DMI, and make_objective's dispatch. Hand-computed cases and independent gradients.

The objectives compute in float32 (`.float()`, for AMP), so checks use float32 tolerances and
finite differences with a float32-sized step rather than float64 gradcheck."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.limit import Outputs, limit_loss
from train.objectives import ce, dmi, estimate_transition, fw, gce, mae, make_objective


def logits_of(probs):
    """Logits whose softmax is exactly `probs` (up to rounding)."""
    return torch.tensor(probs, dtype=torch.float32).log()


def rand_case(b=9, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g) * 2, torch.randint(0, k, (b,), generator=g)


def grad_of(fn, a, y):
    a = a.clone().requires_grad_(True)
    fn(Outputs(a), y)[0].backward()
    return a.grad


def finite_diff(fn, a, y, eps=1e-2):
    """Central differences in float64 around the float32 objective (error O(eps^2))."""
    a = a.double()
    g = torch.zeros_like(a)
    for idx in np.ndindex(*a.shape):
        hi, lo = a.clone(), a.clone()
        hi[idx] += eps
        lo[idx] -= eps
        g[idx] = (fn(Outputs(hi), y)[0].double() - fn(Outputs(lo), y)[0].double()) / (2 * eps)
    return g.float()


# CE ------------------------------------------------------------------------------------------

def test_ce_equals_cross_entropy():
    a, y = rand_case()
    loss, stats = ce(Outputs(a), y)
    torch.testing.assert_close(loss, F.cross_entropy(a, y))
    assert stats == {}
    torch.testing.assert_close(grad_of(ce, a, y), (a.softmax(1) - F.one_hot(y, 4)) / len(a))


# MAE -----------------------------------------------------------------------------------------

def test_mae_hand_case():
    a = logits_of([[0.7, 0.2, 0.1], [0.25, 0.25, 0.5]])
    y = torch.tensor([0, 1])
    # per sample 2 - 2 p_y = ||onehot - softmax||_1: 0.6 and 1.5
    loss, _ = mae(Outputs(a), y)
    torch.testing.assert_close(loss, torch.tensor((0.6 + 1.5) / 2))
    l1 = (F.one_hot(y, 3) - a.softmax(1)).abs().sum(1).mean()
    torch.testing.assert_close(loss, l1)


def test_mae_gradient():
    a, y = rand_case()
    got = grad_of(mae, a, y)
    # analytic: d(2 - 2 p_y)/da_k = -2 p_y (onehot_k - p_k), mean over the batch
    p = a.softmax(1)
    p_y = p.gather(1, y[:, None])
    want = -2 * p_y * (F.one_hot(y, 4) - p) / len(a)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got, finite_diff(mae, a, y), rtol=1e-3, atol=1e-4)


# GCE -----------------------------------------------------------------------------------------

def test_gce_limits():
    a, y = rand_case()
    p_y = a.softmax(1).gather(1, y[:, None]).squeeze(1)
    # q -> 0: (1 - p^q) / q -> -log p  (CE)
    torch.testing.assert_close(gce(Outputs(a), y, q=1e-3)[0], F.cross_entropy(a, y), rtol=1e-2, atol=0)
    # q = 1: 1 - p_y (half of MAE)
    torch.testing.assert_close(gce(Outputs(a), y, q=1.0)[0], (1 - p_y).mean())
    # q = 0.7 by hand, and its gradient against finite differences
    torch.testing.assert_close(gce(Outputs(a), y)[0], ((1 - p_y ** 0.7) / 0.7).mean())
    torch.testing.assert_close(grad_of(gce, a, y), finite_diff(gce, a, y), rtol=1e-3, atol=1e-4)


# FW ------------------------------------------------------------------------------------------

def test_fw_identity_is_ce():
    a, y = rand_case()
    loss, _ = fw(Outputs(a), y, transition=torch.eye(4))
    torch.testing.assert_close(loss, F.cross_entropy(a, y))


def test_fw_known_transition():
    t = torch.tensor([[0.8, 0.2, 0.0], [0.1, 0.6, 0.3], [0.0, 0.25, 0.75]], dtype=torch.float64)
    a = logits_of([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    y = torch.tensor([1, 2])
    # (softmax @ T)_y by hand: sample 0, column 1: 0.7*0.2 + 0.2*0.6 + 0.1*0.25 = 0.285
    #                          sample 1, column 2: 0.1*0.0 + 0.1*0.3 + 0.8*0.75 = 0.63
    want = -(math.log(0.285) + math.log(0.63)) / 2
    loss, _ = fw(Outputs(a), y, transition=t)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    fn = lambda o, l: fw(o, l, transition=t)  # noqa: E731
    b, yb = rand_case(k=3)
    torch.testing.assert_close(grad_of(fn, b, yb), finite_diff(fn, b, yb), rtol=1e-3, atol=1e-4)


# DMI -----------------------------------------------------------------------------------------

def test_dmi_known_confusion_matrix():
    a = logits_of([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    y = torch.tensor([0, 0, 1])
    # onehot^T softmax = [[0.9 + 0.6, 0.1 + 0.4], [0.2, 0.8]] = [[1.5, 0.5], [0.2, 0.8]]: det 1.1
    loss, _ = dmi(Outputs(a), y)
    assert loss.item() == pytest.approx(-math.log(1.1 + 1e-3), rel=1e-5)
    a3 = logits_of([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.4, 0.4, 0.2]])
    y3 = torch.tensor([0, 1, 2, 1])
    # rows: y=0 [.5 .3 .2]; y=1 [.5 1.2 .3]; y=2 [.2 .2 .6]
    det = 0.5 * (1.2 * 0.6 - 0.3 * 0.2) - 0.3 * (0.5 * 0.6 - 0.3 * 0.2) + 0.2 * (0.5 * 0.2 - 1.2 * 0.2)
    assert det == pytest.approx(0.23)
    assert dmi(Outputs(a3), y3)[0].item() == pytest.approx(-math.log(det + 1e-3), rel=1e-5)


def test_dmi_gradient():
    a, y = rand_case(b=16, k=3)
    got = grad_of(dmi, a, y)
    # analytic: J = Y^T P, dL/dJ = -|det J| / (|det J| + 1e-3) * J^{-T}; dL/dP = Y dL/dJ;
    # through the softmax: dL/da_i = p_i * (g_i - <g_i, p_i>)
    p = a.double().softmax(1)
    onehot = F.one_hot(y, 3).double()
    j = onehot.t() @ p
    d = torch.linalg.det(j).abs()
    g = onehot @ (-(d / (d + 1e-3)) * torch.linalg.inv(j).t())
    want = p * (g - (g * p).sum(1, keepdim=True))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got, finite_diff(dmi, a, y), rtol=1e-2, atol=5e-4)


def test_dmi_invariant_to_renaming_labels_and_finite_when_singular():
    a, y = rand_case(b=16, k=3)
    perm = torch.tensor([2, 0, 1])
    # renaming the label classes permutes the rows of onehot^T P: |det| unchanged
    torch.testing.assert_close(dmi(Outputs(a), perm[y])[0], dmi(Outputs(a), y)[0])
    # a constant prediction makes onehot^T P rank one (det 0): loss -log(1e-3), gradient finite
    z = torch.zeros(6, 3)
    loss = dmi(Outputs(z), torch.tensor([0, 1, 2, 0, 1, 2]))[0]
    assert loss.item() == pytest.approx(-math.log(1e-3), rel=1e-5)
    assert torch.isfinite(grad_of(dmi, z, torch.tensor([0, 1, 2, 0, 1, 2]))).all()


# FW's transition estimate ---------------------------------------------------------------------

def test_estimate_transition_on_planted_noise():
    """A model that knows p(clean | x) predicts p(noisy | x) = p(clean | x) @ T; near-certain
    members of each class (anchors, 5% per class, above the 97th percentile) reveal T's rows."""
    rng = np.random.default_rng(0)
    k, n = 4, 8000
    t = np.array([[0.6, 0.2, 0.1, 0.1],
                  [0.1, 0.7, 0.1, 0.1],
                  [0.05, 0.15, 0.65, 0.15],
                  [0.2, 0.0, 0.1, 0.7]])
    post = rng.dirichlet(np.ones(k), size=n)                    # uncertain samples
    n_anchor = n // 20                                          # 5% per class
    for c in range(k):
        rows = slice(c * n_anchor, (c + 1) * n_anchor)
        eps = rng.uniform(0, 0.02, size=(n_anchor, 1))
        post[rows] = (1 - eps) * np.eye(k)[c] + eps * rng.dirichlet(np.ones(k), size=n_anchor)
    probs = post @ t
    est = estimate_transition(probs)
    assert est.shape == (k, k)
    np.testing.assert_allclose(est.sum(1), 1.0, rtol=1e-12)
    assert np.abs(est - t).max() < 0.03
    # without anchors the estimate is visibly off (the test can tell)
    assert np.abs(estimate_transition(rng.dirichlet(np.ones(k), size=n) @ t) - t).max() > 0.05


# make_objective ------------------------------------------------------------------------------

def cfg(method, **kw):
    """The trainer's own typed config (defaults: predictor_loss mae, beta 10, no sampling)."""
    from train.config import Config
    base = dict(method=method, predictor_loss="mae", beta=10.0, sample=False,
                sample_dist="gaussian", sigma=0.1, gce_q=0.7)
    return Config(data=["x"], **{**base, **kw})


@pytest.mark.parametrize("method,fn", [("ce", ce), ("mae", mae), ("dmi", dmi)])
def test_make_objective_plain(method, fn):
    a, y = rand_case()
    obj = make_objective(cfg(method))
    torch.testing.assert_close(obj(Outputs(a), y)[0], fn(Outputs(a), y)[0])


def test_make_objective_gce_and_fw():
    a, y = rand_case()
    torch.testing.assert_close(make_objective(cfg("gce", gce_q=0.3))(Outputs(a), y)[0],
                               gce(Outputs(a), y, q=0.3)[0])
    t = torch.full((4, 4), 0.1) + 0.6 * torch.eye(4)
    torch.testing.assert_close(make_objective(cfg("fw"), transition=t)(Outputs(a), y)[0],
                               fw(Outputs(a), y, transition=t)[0])


@pytest.mark.parametrize("kw,expect", [
    (dict(), dict(predictor_loss="mae", beta=10.0, sample="", sigma=0.1)),
    (dict(predictor_loss="mse", beta=0.3), dict(predictor_loss="mse", beta=0.3, sample="", sigma=0.1)),
    (dict(sample=True, sample_dist="laplace", sigma=0.5),
     dict(predictor_loss="mae", beta=10.0, sample="laplace", sigma=0.5)),
])
def test_make_objective_limit(kw, expect):
    a, y = rand_case()
    r, _ = rand_case(seed=1)
    obj = make_objective(cfg("limit", **kw))
    torch.manual_seed(0)
    got, stats = obj(Outputs(a, r), y)
    torch.manual_seed(0)
    want, _ = limit_loss(a, r, y, **expect)
    torch.testing.assert_close(got, want)
    assert set(stats) == {"predictor_loss", "mu_sq"}
