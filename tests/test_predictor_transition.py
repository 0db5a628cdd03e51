"""--predictor-transition estimate: after +init's CE phase the predictor fits the given labels
through the noise transition matrix the phase's best model estimated on noisy validation
(forward correction), so the classifier learns towards the clean labels' distribution."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.limit import limit_loss
from tests.test_quality_recipe import phase_argv, shards  # noqa: F401 (shards: the module's fixture)
from train import checkpoint, config
from train.clean_estimate import estimate, transition_problem
from train.init_phase import InitPhase
from train.limit import cli


def uniform_t(k: int, p: float) -> torch.Tensor:
    t = torch.full((k, k), p / (k - 1))
    return t.fill_diagonal_(1 - p)


def test_the_predictor_fits_the_labels_through_the_transition():
    torch.manual_seed(0)
    a, r, y = torch.randn(6, 4), torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    t = uniform_t(4, 0.3)
    plain, _ = limit_loss(a, r, y, predictor_loss="mse", beta=2.0)
    same, _ = limit_loss(a, r, y, predictor_loss="mse", beta=2.0, transition=torch.eye(4))
    assert torch.allclose(plain, same)
    q, onehot = r.softmax(1), F.one_hot(y, 4).float()
    for dist, norm in (("mse", lambda e: e.square()), ("mae", lambda e: e.abs())):
        _, stats = limit_loss(a, r, y, predictor_loss=dist, beta=2.0, transition=t)
        assert torch.allclose(stats["predictor_loss"], norm(onehot - q @ t).sum(1).mean())


def test_forward_correction_moves_the_predictor_to_the_clean_posterior():
    """Fitting noisy labels through T: the predictor's best constant output on a class whose
    given labels are 70/10/10/10 is that class alone, where the plain fit stops at 0.7."""
    t = uniform_t(4, 0.3)
    y = torch.tensor([0] * 70 + [1] * 10 + [2] * 10 + [3] * 10)
    for transition, want in ((None, 0.7), (t, 1.0)):
        r = torch.zeros(1, 4, requires_grad=True)
        opt = torch.optim.Adam([r], lr=0.05)
        for _ in range(3000):
            opt.zero_grad()
            loss, _ = limit_loss(torch.zeros(100, 4), r.expand(100, 4), y, predictor_loss="mse", transition=transition)
            loss.backward()
            opt.step()
        assert r.softmax(1)[0, 0].item() == pytest.approx(want, abs=0.02)


def test_the_phase_keeps_the_best_epoch_s_matrix_through_a_resume():
    t = uniform_t(3, 0.2).tolist()
    ph = InitPhase(2, 5, "both", auto_loss=True, transition_mode="estimate")
    assert ph.decide(1, 1, 0.6, t) and ph.transition == t
    again = InitPhase(2, 5, "both", auto_loss=True, transition_mode="estimate")
    again.load(json.loads(json.dumps(ph.state())))
    assert np.allclose(again.transition, t)
    cfg = config.parse(["--data", "x", "--method", "limit", "--init-epochs", "2", "--predictor-transition", "estimate"])
    assert torch.allclose(again.objective(cfg, None).keywords["transition"], torch.tensor(t))
    off = InitPhase(2, 5, "both", auto_loss=True)                     # the flag off: never used
    off.decide(1, 1, 0.6, t)
    assert off.transition is None and off.objective(cfg, None).keywords.get("transition") is None


@pytest.mark.parametrize("bad", [[[1.0]], [[0.5, 0.5], [0.5]], [[0.5, "0.5"], [0.5, 0.5]], [[True, 0], [0, 1]],
                                 [[0.5, 0.6], [0.5, 0.5]], [[1.5, -0.5], [0.0, 1.0]], [[float("nan"), 1], [0, 1]],
                                 "eye", {"a": 1}])
def test_a_matrix_from_a_stranger_s_meta_is_checked(bad):
    assert transition_problem(bad)
    with pytest.raises(checkpoint.CheckpointError, match="transition"):
        InitPhase(2, 5, "both", transition_mode="estimate").load({"end": 2, "loss": None, "beta": None, "transition": bad})
    meta = {"epoch": 1, "step": 2, "config": {}, "best": {"score": 0.5, "epoch": 1, "val_transition": bad}}
    assert "val_transition" in checkpoint.check_meta(meta)


@pytest.mark.parametrize("key", ["val_acc_clean_est", "val_acc_clean_est_se", "switch_score"])
def test_a_clean_estimate_from_a_stranger_s_meta_must_be_a_number(key):
    """The switch makes best's estimate the selection score (loop.fit): a string there would
    be compared with floats for the rest of the run."""
    meta = {"epoch": 1, "step": 2, "config": {}, "best": {"score": 0.5, "epoch": 1, key: "0.9"}}
    assert "best" in checkpoint.check_meta(meta)
    assert checkpoint.check_meta({**meta, "best": {"score": 0.5, "epoch": 1, key: 0.9}}) is None


def test_the_estimate_hands_back_the_model_s_matrix_only_from_calibrated_probabilities():
    rng = np.random.default_rng(0)
    t = uniform_t(3, 0.3).numpy().astype(np.float64)
    clean = rng.integers(0, 3, 3000)
    given = np.array([rng.choice(3, p=t[c]) for c in clean])
    calibrated = estimate(t[clean] + rng.normal(0, 0.01, (3000, 3)).clip(-0.05, 0.05), given)
    assert calibrated["acc_clean_est"] is not None
    assert np.allclose(calibrated["transition"], t, atol=0.05)
    sharp = estimate(np.eye(3)[clean] * 0.98 + 0.01, given)           # sharper than the labels allow
    assert sharp["transition"] is None                                # nothing for the predictor to fit through
    assert abs(sharp["acc_clean_est"] - 1.0) < 0.05                   # the accuracy (1) still counts from the labels


def test_the_flag_needs_the_ce_phase_and_limit():
    with pytest.raises(config.ConfigError, match="needs --init-epochs"):
        config.check_resolved(config.parse(["--data", "x", "--method", "limit", "--predictor-transition", "estimate"]))
    with pytest.raises(config.ConfigError, match="predictor-transition"):
        config.parse(["--data", "x", "--method", "ce", "--predictor-transition", "estimate"])


def test_a_run_switches_with_the_phase_s_matrix(shards, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(phase_argv(shards, out, "uniform:0.3", "mse") + ["--predictor-transition", "estimate"]) == 0
    log = capsys.readouterr().out
    meta = json.loads((out / "checkpoints" / "last" / "meta.json").read_text())
    t = meta["init_phase"]["transition"]
    assert transition_problem(t) is None
    if t is None:
        assert "no noise transition could be estimated" in log
    else:
        assert len(t) == 10 and f"mean diagonal {np.mean(np.diag(t)):.3f}" in log
        best = meta["best"]                     # selection through T, for the phase's best too
        assert best["score"] == (best["switch_score"] if best["epoch"] < 2 else best["val_acc_clean_est"])
    assert json.loads((out / "config.json").read_text())["predictor_transition"] == "estimate"


# ---- --predictor-transition auto: only for structured noise ----
def pair_t(k: int, p: float, pairs) -> torch.Tensor:
    t = torch.eye(k)
    for src, dst in pairs:
        t[src, src], t[src, dst] = 1 - p, p
    return t


def test_noise_structure_is_zero_for_uniform_noise_and_one_for_pairs():
    from train.clean_estimate import noise_structure
    assert noise_structure(uniform_t(10, 0.6).tolist()) == pytest.approx(0.0, abs=1e-6)
    assert noise_structure(pair_t(10, 0.4, [(0, 6), (2, 4), (5, 7), (9, 7)]).tolist()) == pytest.approx(1.0)
    assert noise_structure(None) == 0.0 and noise_structure(torch.eye(5).tolist()) == 0.0
    assert noise_structure(uniform_t(2, 0.3).tolist()) == 0.0         # two classes: nothing to tell apart
    mixed = (0.5 * uniform_t(10, 0.4) + 0.5 * pair_t(10, 0.4, [(c, (c + 1) % 10) for c in range(10)])).tolist()
    assert 0.3 < noise_structure(mixed) < 0.7


@pytest.mark.parametrize("t, used", [(uniform_t(10, 0.6), False), (pair_t(10, 0.4, [(0, 6), (2, 4), (5, 7)]), True)])
def test_auto_corrects_structured_noise_only(t, used):
    ph = InitPhase(2, 5, "both", auto_loss=True, transition_mode="auto")
    assert ph.decide(1, 1, 0.6, t.tolist())
    assert (ph.transition is not None) == used
    note = ph.choices_note(config.parse(["--data", "x", "--method", "limit"]), t.tolist())
    assert ("through the estimated noise" in note) == used and "--predictor-transition auto" in note


def test_the_recipe_sets_auto_with_its_ce_phase_only():
    from train.recipe import apply_recipe
    argv = ["--data", "x", "--method", "limit", "--model", "mnist_cnn", "--epochs", "60"]
    cfg, changed = apply_recipe(config.parse(argv), {"augment": {"crop": "none"}}, config.given(argv))
    assert cfg.predictor_transition == "auto" and "predictor_transition" in changed
    short = argv[:-1] + ["3"]                                       # too short for a CE phase
    assert apply_recipe(config.parse(short), {}, config.given(short))[0].predictor_transition == "none"
    typed = argv + ["--predictor-transition", "none"]
    assert apply_recipe(config.parse(typed), {}, config.given(typed))[0].predictor_transition == "none"


def test_selection_after_a_corrected_switch_uses_the_clean_estimate():
    from train.loop import Run, selection_score
    run = Run(cfg=None, accelerator=None, model=None, optimizer=None, objective=None, loaders={}, norm=(),
              steps_per_epoch=10, out=None, init=InitPhase(2, 5, "both", transition_mode="estimate"))
    row = {"val_acc": 0.70, "val_acc_clean_est": 0.85, "train_acc": 0.6}
    assert selection_score(run, 1, row) == 0.70                     # the CE phase: noisy accuracy
    run.init.decide(1, 1, 0.7, uniform_t(10, 0.3).tolist())
    assert selection_score(run, 2, row) == 0.85                     # after the switch: through T
    run.init.transition = None
    assert selection_score(run, 2, row) == 0.70


@pytest.mark.parametrize("best, score", [
    ({"score": 0.35, "val_acc": 0.35, "val_acc_clean_est": 0.9743, "switch_score": 0.9650}, 0.9650),
    ({"score": 0.35, "val_acc": 0.35, "val_acc_clean_est": 0.9743, "switch_score": None}, 0.35),   # singular T
    ({"score": 0.35, "val_acc": 0.35, "val_acc_clean_est": 0.9743}, 0.9743),      # an older checkpoint
    ({"score": 0.35, "val_acc": 0.35, "val_acc_clean_est": None}, 0.35),
])
def test_the_phase_s_best_is_scored_through_the_kept_matrix(best, score):
    """At the switch the CE phase's best competes with LIMIT's epochs, which are scored through
    the kept T; it was scored by its counted estimate instead, another estimator (SE ~0.07 at
    MNIST pair 0.4), whose lucky 0.9743 kept a CE epoch at test 0.972 over LIMIT epochs at 0.99."""
    from train.loop import switch_score
    assert switch_score(best) == score
