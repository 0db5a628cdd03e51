"""Issue 29 item 6 and item 4's flags: the config is resolved once into a frozen value (the
recipe included), and a flag that only another method reads is refused by one generic check
over the objective registry's declarations."""
import dataclasses
from pathlib import Path

import pytest

from tests.shardkit import make_digit_shards
from train import config
from train.limit import cli
from train.objectives import REGISTRY
from train.recipe import apply_recipe
from train.resolve import resolve

DIGITS = {"augment": {"crop": "none"}}


def own_flags(method: str) -> list[str]:
    """Every flag `method`'s entry lists, typed at its default value (a boolean as --no-X)."""
    argv = []
    for name in sorted(REGISTRY[method].flags):
        f = config.Config.__dataclass_fields__[name]
        flag = config.flag_of(name)
        argv += [flag.replace("--", "--no-", 1)] if f.type is bool else [flag, str(f.default)]
    return argv


def test_every_declared_flag_is_a_config_field():
    fields = {f.name for f in dataclasses.fields(config.Config)}
    for name, obj in REGISTRY.items():
        assert obj.flags <= fields, (name, obj.flags - fields)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_a_methods_own_flags_are_accepted(method):
    extra = ["--init-from", "r"] if REGISTRY[method].fine_tunes else []
    cfg = config.parse(["--data", "x", "--method", method, *extra, *own_flags(method)])
    assert cfg.method == method


@pytest.mark.parametrize("argv, flag, needs", [
    (["--method", "ce", "--beta", "5"], "--beta", "needs --method limit or softreg, got ce"),
    (["--method", "ce", "--beta", "10"], "--beta", "needs --method limit or softreg"),   # typed at its default
    (["--method", "limit", "--gce-q", "0.5"], "--gce-q", "needs --method gce, got limit"),
    (["--method", "gce", "--lambda", "0.1"], "--lambda", "needs --method softreg"),
    (["--method", "softreg", "--predictor", "head"], "--predictor", "needs --method limit"),
    (["--method", "mae", "--predictor-warmup", "1"], "--predictor-warmup", "needs --method limit"),
    (["--method", "fw", "--init-from", "r", "--init-target", "both"], "--init-target", "needs --method limit"),
    (["--method", "dmi", "--init-from", "r", "--transition", "t.txt"], "--transition", "needs --method fw"),
    (["--method", "limit", "--grad-noise-sigma", "1"], "--grad-noise-sigma", "needs --method ce"),
    (["--method", "softreg", "--no-sample"], "--sample", "needs --method limit"),
])
def test_another_methods_flag_is_one_line_and_exit_2(argv, flag, needs, tmp_path, capsys):
    with pytest.raises(config.ConfigError, match=needs):
        config.parse(["--data", "x", *argv])
    assert cli(["--data", "x", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"limit: error: {flag} ") and needs in err[0]


def test_only_typed_flags_count():
    """The recipe sets limit-only fields (init_epochs, predictor_loss, beta) that the user
    never typed, and a saved config.json (tools/review/ranking.py) holds every field: neither
    is a request, so neither is refused, whatever its value."""
    argv = ["--data", "x", "--method", "limit", "--epochs", "20"]
    given = config.given(argv)
    cfg, changed = apply_recipe(config.parse(argv), DIGITS, given)
    assert {"beta", "init_epochs", "predictor_loss"} <= set(changed) and not set(changed) & given
    assert config.validate(cfg, given) == cfg
    # what a CE run's config.json may hold from before this check: read, not refused
    old = config.Config(data=["x"], method="ce", beta=5.0, init_target="both", predictor_loss="mse")
    assert config.validate(old) == old


def test_the_config_is_frozen_and_the_recipe_returns_a_new_value():
    argv = ["--data", "x", "--method", "limit", "--model", "mnist_cnn"]
    cfg = config.parse(argv)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch_size = 1
    new, changed = apply_recipe(cfg, DIGITS, config.given(argv))
    assert new is not cfg and (cfg.batch_size, new.batch_size) == (256, 64) and changed["batch_size"] == (256, 64)
    off = config.parse(argv + ["--recipe", "none"])
    assert apply_recipe(off, DIGITS, config.given(argv + ["--recipe", "none"])) == (off, {})


def test_resolve_makes_one_value_with_the_recipe_and_absolute_shards(tmp_path, monkeypatch):
    shards = make_digit_shards(tmp_path / "d", n_train=200, n_test=50)
    monkeypatch.chdir(shards.parent)
    res = resolve(["--data", "shards", "--method", "limit", "--model", "mnist_cnn", "--epochs", "8"])
    cfg = res.cfg
    assert len(cfg.data) == 1 and Path(cfg.data[0]).is_absolute() and Path(cfg.data[0]).resolve() == shards.resolve()
    assert (cfg.batch_size, cfg.augment, cfg.init_epochs) == (64, "pad:2", 2)
    assert res.recipe["init_epochs"] == (0, 2) and res.ds.card["classes"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.cfg.data = None
    with pytest.raises(config.ConfigError, match="needs --init-epochs"):     # checked after the recipe
        resolve(["--data", "shards", "--method", "limit", "--epochs", "3", "--predictor-loss", "auto"])
