"""LIMIT's 60-epoch recipe (issue 17, RESULTS.md "Tuning"): the --augment override of the
card's train crop, and what the pad:N translation computes."""
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.augment import AugSpec, spec_from_card, train_crop_override, train_image, eval_image
from train import config

DIGITS = {"channels": 1, "augment": {"size": 28, "crop": "none", "flip": False}}


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_card_recipe_is_kept_by_default():
    assert spec_from_card(DIGITS) == spec_from_card(DIGITS, 0, "card") == spec_from_card(DIGITS, 0, "")
    assert spec_from_card(DIGITS).crop == "none"


def test_pad_sets_a_pad_random_crop_of_the_same_size():
    spec = spec_from_card(DIGITS, 0, "pad:2")
    assert (spec.crop, spec.pad, spec.size, spec.flip, spec.channels) == ("pad_random", 2, 28, False, 1)
    assert train_crop_override(spec, "none").crop == "none"


def test_bad_override_is_refused():
    with pytest.raises(ValueError):
        train_crop_override(AugSpec(), "pad:x")
    with pytest.raises(SystemExit):                  # the flag's choices: one line, exit 2
        config.parse(["--data", "x", "--augment", "shift"])


def test_pad_is_a_translation_of_at_most_n_pixels():
    """Every pad:2 train image is the eval image shifted by (dy, dx) in [-2, 2]^2, zeros
    coming in at the border; over many draws all 25 shifts occur."""
    rng = np.random.default_rng(0)
    arr = rng.integers(1, 256, (28, 28), dtype=np.uint8)       # no zero pixel: shifts are identifiable
    data = png(arr)
    spec = spec_from_card(DIGITS, 0, "pad:2")
    plain = eval_image(data, spec)[0].numpy()
    assert (plain == arr).all()                                 # eval is untouched by --augment
    padded = np.pad(arr, 2)
    seen = set()
    r = random.Random(0)
    for _ in range(300):
        out = train_image(data, spec, r)
        assert out.shape == (1, 28, 28) and out.dtype == torch.uint8
        img = out[0].numpy()
        hits = [(t, l) for t in range(5) for l in range(5) if (padded[t:t + 28, l:l + 28] == img).all()]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) == 25


def test_config_default_and_choices():
    assert config.parse(["--data", "x"]).augment == "card"
    assert config.parse(["--data", "x", "--augment", "pad:2"]).augment == "pad:2"


def recipe_of(argv, card=DIGITS):
    from train.recipe import apply_recipe
    cfg = config.parse(["--data", "x", *argv])
    return apply_recipe(cfg, card, config.given(["--data", "x", *argv]))


def test_limit_gets_the_recipe_for_flags_left_at_their_defaults():
    cfg, changed = recipe_of(["--method", "limit", "--model", "mnist_cnn"])
    assert (cfg.batch_size, cfg.model_ema, cfg.augment, cfg.beta) == (64, True, "pad:2", 5.0)
    assert changed["batch_size"] == (256, 64) and changed["beta"] == (10.0, 5.0)
    # the CE phase (a quarter of the 10 default epochs) starts both networks: the predictor
    # keeps the classifier's backbone
    assert (cfg.init_epochs, cfg.init_target, cfg.predictor_model, cfg.predictor_loss) == (2, "both", "", "auto")
    assert set(changed) == {"batch_size", "model_ema", "augment", "beta", "init_epochs", "init_target", "predictor_loss",
                            "predictor_transition"}
    cfg, changed = recipe_of(["--method", "limit", "--model", "mnist_cnn", "--init-epochs", "0"])
    assert cfg.predictor_model == "mnist_cnn_bn" and "init_target" not in changed


def test_flags_given_win_and_recipe_none_is_the_old_behaviour():
    cfg, _ = recipe_of(["--method", "limit", "--model", "mnist_cnn", "--batch-size", "128", "--augment", "none",
                        "--predictor-model", "mnist_cnn"])
    assert (cfg.batch_size, cfg.augment, cfg.predictor_model, cfg.model_ema) == (128, "none", "mnist_cnn", True)
    cfg, _ = recipe_of(["--method", "limit", "--model", "mnist_cnn", "--batch-size", "256"])
    assert cfg.batch_size == 256                     # typed at its default value: still the user's
    cfg, _ = recipe_of(["--method", "limit", "--model", "mnist_cnn", "--beta", "10"])
    assert cfg.beta == 10.0
    cfg, changed = recipe_of(["--method", "limit", "--model", "mnist_cnn", "--recipe", "none"])
    assert changed == {} and (cfg.batch_size, cfg.model_ema, cfg.predictor_model, cfg.augment, cfg.beta) == (256, False, "", "card", 10.0)


def test_other_methods_and_cropped_cards_are_untouched():
    cfg, changed = recipe_of(["--method", "ce", "--model", "mnist_cnn"])
    assert changed == {} and cfg.batch_size == 256
    photos = {"channels": 3, "augment": {"size": 224, "resize": 256, "crop": "random", "flip": True}}
    cfg, changed = recipe_of(["--method", "limit", "--model", "resnet50"], photos)
    assert "augment" not in changed and "predictor_model" not in changed and cfg.augment == "card"
    cfg, changed = recipe_of(["--method", "limit", "--model", "mnist_cnn", "--predictor", "head"])
    assert "predictor_model" not in changed
    cfg, changed = recipe_of(["--method", "limit", "--model", "mnist_cnn", "--init-from", "ce", "--init-target", "both"])
    assert "predictor_model" not in changed and cfg.batch_size == 64     # +init copies mnist_cnn into the predictor
