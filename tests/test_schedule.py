"""The learning-rate schedule (train.setup.lr_at): warm-up at the start and again after +init's
switch, where the optimizer's moments restart."""
import pytest

from train.setup import lr_at


def test_warmup_then_constant():
    assert [lr_at(s, 100, 4, 1.0, "const") for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_no_warmup_is_the_peak_from_step_zero():
    assert lr_at(0, 100, 0, 2e-3, "const") == 2e-3
    assert lr_at(50, 100, 0, 2e-3, "const", restart=40) == 2e-3


def test_warmup_restarts_at_the_switch():
    rates = [lr_at(s, 100, 4, 1.0, "const", restart=10) for s in range(8, 16)]
    assert rates == [1.0, 1.0, 0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_restart_ramps_the_cosine_value():
    plain = lr_at(60, 100, 4, 1.0, "cosine")
    assert 0 < plain < 1
    assert lr_at(60, 100, 4, 1.0, "cosine", restart=59) == pytest.approx(plain * 2 / 4)
    assert lr_at(63, 100, 4, 1.0, "cosine", restart=59) == pytest.approx(lr_at(63, 100, 4, 1.0, "cosine"))


def test_cosine_reaches_zero_at_the_end():
    assert lr_at(100, 100, 0, 1.0, "cosine") == pytest.approx(0.0, abs=1e-12)


def test_the_run_restarts_the_warmup_at_the_switch_epoch():
    from train.init_phase import InitPhase
    from train.loop import Run
    run = Run(cfg=None, accelerator=None, model=None, optimizer=None, objective=None, loaders={}, norm=(),
              steps_per_epoch=10, out=None, init=InitPhase(max_epochs=15, patience=3, target="both"))
    assert run.switch_step == 0                      # the phase's end not decided yet: no restart
    run.init.end = 7
    assert run.switch_step == 70
    assert Run(cfg=None, accelerator=None, model=None, optimizer=None, objective=None, loaders={}, norm=(),
               steps_per_epoch=10, out=None).switch_step == 0
