"""LIMIT's surrogate loss: gradients against an independent reference formulation, beta, sampling,
AMP (fp16 + GradScaler, bf16), head mode, gradient accumulation and the detection score.

Convention under test (docs/architecture.md section 2): the classifier's logits receive exactly mu / B,
the scale of mean cross-entropy; the reference code's summed gradient is B times larger."""
import copy
import math
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

import models.backbones  # noqa: F401  (registers mnist_cnn in timm)
from models.limit import FusedNet, PredictorHead, limit_loss, sample_noise
from tools.review.scores import label_scores

K, D, B = 5, 7, 12


def mlp(seed, dtype=torch.float64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, K)).to(dtype)


def pair(dtype=torch.float64):
    """A tiny classifier + predictor network pair (no BatchNorm: batch-size independent)."""
    return FusedNet(mlp(1, dtype), mlp(2, dtype), mode="network")


def batch(n=B, dtype=torch.float64, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g, dtype=dtype), torch.randint(0, K, (n,), generator=g)


def grads(module):
    return [p.grad.clone() for p in module.parameters()]


def assert_grads_close(got, want, **tol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)


def ref_classifier_grads(classifier, predictor, x, noise=None):
    """Independent formulation: forward separately, mu = s(a).detach() - s(r), and
    `logits.backward(mu / B)` (plus the sampled noise for +S)."""
    a, r = classifier(x), predictor(x)
    mu = (a.softmax(1) - r.softmax(1)).detach()
    if noise is not None:
        mu = mu + noise
    classifier.zero_grad()
    a.backward(mu / len(x))
    return grads(classifier)


def ref_predictor_grads(classifier, predictor, x, y, predictor_loss, beta):
    """The predictor's loss alone: dist(onehot, s(r)) + beta * mean ||s(a).detach() - s(r)||^2."""
    with torch.no_grad():
        p = classifier(x).softmax(1)
    q = predictor(x).softmax(1)
    err = F.one_hot(y, K).to(q.dtype) - q
    dist = err.square().sum(1) if predictor_loss == "mse" else err.abs().sum(1)
    loss = dist.mean() + beta * (p - q).square().sum(1).mean()
    return list(torch.autograd.grad(loss, list(predictor.parameters())))


def limit_grads(net, x, y, **kw):
    net.zero_grad()
    out = net(x)
    loss, stats = limit_loss(out.logits, out.aux, y, **kw)
    loss.backward()
    return grads(net.classifier), grads(net.predictor), stats


# float64 networks; limit_loss computes its softmaxes in float32, hence float32 tolerances
TOL = dict(rtol=1e-5, atol=1e-7)


# 1 + 2 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("predictor_loss", ["mse", "mae"])
@pytest.mark.parametrize("beta", [0.0, 3.0])
def test_classifier_and_predictor_grads_match_reference(predictor_loss, beta):
    net = pair()
    x, y = batch()
    got_c, got_p, _ = limit_grads(net, x, y, predictor_loss=predictor_loss, beta=beta)
    ref = pair()
    want_c = ref_classifier_grads(ref.classifier, ref.predictor, x)
    want_p = ref_predictor_grads(ref.classifier, ref.predictor, x, y, predictor_loss, beta)
    assert_grads_close(got_c, want_c, **TOL)
    assert_grads_close(got_p, want_p, **TOL)
    assert all(g.abs().sum() > 0 for g in got_c + got_p)


def test_logit_gradient_is_mu_over_batch_size():
    torch.manual_seed(0)
    a = torch.randn(B, K, requires_grad=True)
    r = torch.randn(B, K, requires_grad=True)
    y = torch.randint(0, K, (B,))
    loss, _ = limit_loss(a, r, y, predictor_loss="mae", beta=1.0)
    loss.backward()
    mu = a.softmax(1) - r.softmax(1)
    torch.testing.assert_close(a.grad, (mu / B).detach(), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("predictor_loss", ["mse", "mae"])
def test_beta_changes_only_the_predictor(predictor_loss):
    x, y = batch()
    c0, p0, s0 = limit_grads(pair(), x, y, predictor_loss=predictor_loss, beta=0.0)
    c10, p10, s10 = limit_grads(pair(), x, y, predictor_loss=predictor_loss, beta=10.0)
    for a, b in zip(c0, c10):
        assert torch.equal(a, b)
    assert any(not torch.allclose(a, b) for a, b in zip(p0, p10))
    torch.testing.assert_close(s0["predictor_loss"], s10["predictor_loss"])


# 3: sampling (+S) ----------------------------------------------------------------------------

def ref_laplace(shape, sigma):
    """Independent inverse-CDF Laplace with variance sigma^2 (scale b = sigma / sqrt(2))."""
    u = torch.rand(shape) - 0.5
    return -(sigma / math.sqrt(2)) * torch.sign(u) * torch.log(1 - 2 * u.abs())


@pytest.mark.parametrize("dist", ["gaussian", "laplace"])
def test_sampled_classifier_gradient_is_mu_plus_noise_over_b(dist):
    sigma = 0.3
    x, y = batch()
    net = pair()
    net.zero_grad()
    out = net(x)
    torch.manual_seed(123)  # nothing random runs between here and limit_loss's noise
    loss, _ = limit_loss(out.logits, out.aux, y, predictor_loss="mae", beta=1.0,
                         sample=dist, sigma=sigma)
    loss.backward()
    got_c, got_p = grads(net.classifier), grads(net.predictor)

    torch.manual_seed(123)
    noise = torch.randn(B, K) * sigma if dist == "gaussian" else ref_laplace((B, K), sigma)
    ref = pair()
    want_c = ref_classifier_grads(ref.classifier, ref.predictor, x, noise.double())
    assert_grads_close(got_c, want_c, **TOL)
    # the noise reaches the classifier only; the predictor's gradient is the -S one
    want_p = ref_predictor_grads(ref.classifier, ref.predictor, x, y, "mae", 1.0)
    assert_grads_close(got_p, want_p, **TOL)
    # and it really is noisier than -S
    plain_c, _, _ = limit_grads(pair(), x, y, predictor_loss="mae", beta=1.0)
    assert any(not torch.allclose(a, b) for a, b in zip(got_c, plain_c))


@pytest.mark.parametrize("dist,kurtosis", [("gaussian", 0.0), ("laplace", 3.0)])
def test_noise_statistics(dist, kurtosis):
    torch.manual_seed(0)
    sigma = 0.2
    z = sample_noise(torch.zeros(1_000_000, dtype=torch.float32), dist, sigma).double()
    assert torch.isfinite(z).all()
    assert abs(z.mean().item()) < 5 * sigma / 1000            # 5 standard errors
    assert z.var().item() == pytest.approx(sigma ** 2, rel=0.02)
    excess = ((z - z.mean()) ** 4).mean().item() / z.var().item() ** 2 - 3
    assert excess == pytest.approx(kurtosis, abs=0.15)          # tells the two apart
    if dist == "laplace":                                       # E|z| = b = sigma / sqrt(2)
        assert z.abs().mean().item() == pytest.approx(sigma / math.sqrt(2), rel=0.01)


def test_laplace_noise_finite_when_rand_returns_zero(monkeypatch):
    """torch.rand can return exactly 0.0; log1p(-1) = -inf would NaN the whole step."""
    monkeypatch.setattr(torch, "rand_like", lambda t, **kw: torch.zeros_like(t, **kw))
    z = sample_noise(torch.zeros(4, K), "laplace", 0.1)
    assert torch.isfinite(z).all()


# 4: AMP --------------------------------------------------------------------------------------

class ReplaceGrad(torch.autograd.Function):
    """The reference code's style: the logits' gradient is replaced by a stored tensor and the
    incoming gradient (which carries the loss scale, accumulation factors, ...) is ignored."""

    @staticmethod
    def forward(ctx, logits, grad):
        ctx.save_for_backward(grad)
        return logits.view_as(logits)

    @staticmethod
    def backward(ctx, incoming):
        (grad,) = ctx.saved_tensors
        return grad.to(incoming.dtype), None


def custom_fn_loss(out, labels, beta=1.0):
    """Same mu / B gradient for the classifier, delivered by ReplaceGrad instead of a surrogate."""
    a, r = out.logits.float(), out.aux.float()
    p, q = a.softmax(1), r.softmax(1)
    mu = p.detach() - q
    onehot = F.one_hot(labels, a.shape[1]).float()
    fit = (onehot - q).abs().sum(1).mean()
    return ReplaceGrad.apply(a, mu.detach() / len(a)).sum() + fit + beta * mu.square().sum(1).mean()


def ours_loss(out, labels, beta=1.0):
    return limit_loss(out.logits, out.aux, labels, predictor_loss="mae", beta=beta)[0]


def sgd_update(net, x, y, loss_fn, amp=None, scale=None, lr=0.1):
    """One SGD step; returns (classifier update, predictor update) as flat vectors: -lr times
    the gradient the optimizer applied (read off after the step, so unscaled by the scaler),
    checked against the parameters' actual move (a difference of fp32 parameters is only good
    to their ulp, too coarse to compare tiny updates by)."""
    net = copy.deepcopy(net)
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale) if scale else None
    with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
        out = net(x)
        loss = loss_fn(out, y)
    if scaler:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() == scale, "the scaler found inf/nan and skipped the step"
    else:
        loss.backward()
        opt.step()
    n_c = len(list(net.classifier.parameters()))
    delta = [(-lr * p.grad).flatten() for p in net.parameters()]
    for p, b, d in zip(net.parameters(), before, delta):
        torch.testing.assert_close((p.detach() - b).flatten(), d, rtol=1e-3, atol=1e-7)
    return torch.cat(delta[:n_c]), torch.cat(delta[n_c:])


def fp32_setup():
    net = pair(torch.float32)
    x, y = batch(32, torch.float32)
    return net, x, y


def close_update(got, want, rel):
    """Elementwise within rel * the largest component, and the same norm within rel."""
    torch.testing.assert_close(got, want, rtol=rel, atol=rel * want.abs().max().item())
    assert got.norm().item() == pytest.approx(want.norm().item(), rel=rel)


def scaled_grads(net, x, y, loss_fn, scale):
    """Gradients of loss * scale, divided by scale afterwards (loss scaling, done by hand)."""
    net = copy.deepcopy(net)
    (loss_fn(net(x), y) * scale).backward()
    return [torch.cat([p.grad.flatten() / scale for p in m.parameters()])
            for m in (net.classifier, net.predictor)]


def test_loss_scaling_exact_in_fp32():
    """Scale the loss by 2^16, backward, unscale: the surrogate's gradients are unchanged (2^16 is
    a power of two, so to rounding); the custom backward's classifier gradient shrinks by 2^16."""
    net, x, y = fp32_setup()
    for loss_fn in (ours_loss, custom_fn_loss):
        plain = scaled_grads(net, x, y, loss_fn, 1.0)
        unscaled = scaled_grads(net, x, y, loss_fn, 2.0 ** 16)
        torch.testing.assert_close(unscaled[1], plain[1], rtol=1e-6, atol=1e-12)  # predictor: both fine
        if loss_fn is ours_loss:
            torch.testing.assert_close(unscaled[0], plain[0], rtol=1e-6, atol=1e-12)
        else:
            torch.testing.assert_close(unscaled[0], plain[0] / 2.0 ** 16, rtol=1e-6, atol=1e-15)
    # without scaling the two formulations agree: the difference above is the scaling alone
    for a, b in zip(scaled_grads(net, x, y, ours_loss, 1.0), scaled_grads(net, x, y, custom_fn_loss, 1.0)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def test_fp16_gradscaler_update_matches_fp32():
    net, x, y = fp32_setup()
    ref_c, ref_p = sgd_update(net, x, y, ours_loss)
    c, p = sgd_update(net, x, y, ours_loss, amp=torch.float16, scale=2.0 ** 16)
    close_update(c, ref_c, 1e-2)
    close_update(p, ref_p, 1e-2)


def test_fp16_gradscaler_breaks_custom_backward():
    """The failure mode the surrogate avoids: under the same fp16 + GradScaler step, the
    reference-style custom backward's classifier update is divided by the scale."""
    net, x, y = fp32_setup()
    ref_c, ref_p = sgd_update(net, x, y, custom_fn_loss)
    c, p = sgd_update(net, x, y, custom_fn_loss, amp=torch.float16, scale=2.0 ** 16)
    close_update(p, ref_p, 1e-2)                              # the predictor is unaffected
    assert c.norm().item() == pytest.approx(ref_c.norm().item() / 2 ** 16, rel=1e-2)
    ours_c, _ = sgd_update(net, x, y, ours_loss, amp=torch.float16, scale=2.0 ** 16)
    assert ours_c.norm().item() > 1e4 * c.norm().item()


def test_bf16_autocast_update_matches_fp32():
    net, x, y = fp32_setup()
    ref_c, ref_p = sgd_update(net, x, y, ours_loss)
    c, p = sgd_update(net, x, y, ours_loss, amp=torch.bfloat16)
    close_update(c, ref_c, 5e-2)
    close_update(p, ref_p, 5e-2)


# 5: head mode --------------------------------------------------------------------------------

def test_head_mode_trunk_gets_only_the_surrogate_gradient():
    torch.manual_seed(0)
    clf = timm.create_model("mnist_cnn", num_classes=10).double()
    net = FusedNet(clf, PredictorHead(clf.num_features, 10, hidden=32).double(), mode="head")
    ref = copy.deepcopy(net)                 # before any forward: identical BatchNorm state
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))

    out = net(x)
    loss, _ = limit_loss(out.logits, out.aux, y, predictor_loss="mae", beta=10.0)
    loss.backward()

    # reference: the classifier's surrogate term alone, mu from a detached predictor pass
    feats = ref.classifier.forward_head(ref.classifier.forward_features(x), pre_logits=True)
    a = ref.classifier.get_classifier()(feats)
    r = ref.predictor(feats.detach())
    mu = (a.softmax(1) - r.softmax(1)).detach()
    (a * mu).sum(1).mean().backward()
    names = [n for n, _ in net.classifier.named_parameters()]
    assert any(n.startswith("features.") for n in names) and "fc.weight" in names
    for (n, p), q in zip(net.classifier.named_parameters(), ref.classifier.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-8, msg=n)
    # the predictor head's gradient is its own loss's
    onehot = F.one_hot(y, 10).double()
    rq = r.softmax(1)
    pl = (onehot - rq).abs().sum(1).mean() + 10.0 * (a.softmax(1).detach() - rq).square().sum(1).mean()
    want = torch.autograd.grad(pl, list(ref.predictor.parameters()))
    assert_grads_close(grads(net.predictor), list(want), rtol=1e-5, atol=1e-8)


# 6: gradient accumulation --------------------------------------------------------------------

@pytest.mark.parametrize("predictor_loss", ["mse", "mae"])
def test_accumulated_half_batches_equal_full_batch(predictor_loss):
    x, y = batch(16)
    full_c, full_p, _ = limit_grads(pair(), x, y, predictor_loss=predictor_loss, beta=2.0)
    net = pair()
    net.zero_grad()
    for sl in (slice(0, 8), slice(8, 16)):
        out = net(x[sl])
        loss, _ = limit_loss(out.logits, out.aux, y[sl], predictor_loss=predictor_loss, beta=2.0)
        (loss / 2).backward()
    assert_grads_close(grads(net.classifier), full_c, **TOL)
    assert_grads_close(grads(net.predictor), full_p, **TOL)


def test_accumulation_breaks_custom_backward():
    """loss / 2 per half-batch: the custom backward ignores the 1/2, so its classifier gets 2x."""
    net, x, y = fp32_setup()
    full = copy.deepcopy(net)
    custom_fn_loss(full(x), y).backward()
    net.zero_grad()
    for sl in (slice(0, 16), slice(16, 32)):
        (custom_fn_loss(net(x[sl]), y[sl]) / 2).backward()
    for p, q in zip(net.classifier.parameters(), full.classifier.parameters()):
        torch.testing.assert_close(p.grad, 2 * q.grad, rtol=1e-5, atol=1e-7)


# 7: detection score --------------------------------------------------------------------------

def test_label_scores_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.25, 0.25, 0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 2, 2])
    logits = probs.log() + torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)  # shift-invariant
    l2 = torch.tensor([math.sqrt(0.3 ** 2 + 0.2 ** 2 + 0.1 ** 2),
                       math.sqrt(0.7 ** 2 + 0.2 ** 2 + 0.9 ** 2),
                       math.sqrt(0.25 ** 2 + 0.25 ** 2 + 0.5 ** 2)])
    l1 = torch.tensor([0.6, 1.8, 1.0])                           # = 2 - 2 p_y
    torch.testing.assert_close(label_scores(logits, labels, "mse"), l2.float())
    torch.testing.assert_close(label_scores(logits, labels, "mae"), l1.float())
    # the score a suspicious label gets is larger
    s = label_scores(logits, labels, "mae")
    assert s[1] > s[0]
