"""LIMIT's default recipe (--recipe auto): the flags --method limit sets when the command line
leaves them at their defaults. Kept apart from the objectives (train/objectives.py), which
define what is optimized; this module decides how long and with what settings."""
from dataclasses import replace


# ---- LIMIT's 60-epoch recipe (--recipe auto; RESULTS.md, "Tuning", issue 17) ----------------
# Flags that --recipe auto sets for --method limit while they hold their defaults. Batch 64 takes
# 4x the optimizer steps per epoch of 256 (LIMIT's budget is steps, not passes); the EMA makes
# selection on the noisy validation split steadier; the BatchNorm predictor is the one every
# measured LIMIT row used. pad:2 (a random shift of up to 2 px) only where the card has no train
# crop (digits): it slows the predictor's memorizing of the noisy labels. beta 5, not the config's
# 10: a smaller penalty on ||mu||^2 lets the predicted gradients teach faster, and at 60 epochs
# the run is step-bound, not memorization-bound (p=0.8, n=10^4, 3 seeds: 0.9610 against beta
# 10's 0.9491, with a higher noisy-validation accuracy on every seed).
LIMIT_RECIPE = {"batch_size": 64, "model_ema": True, "beta": 5.0}
LIMIT_PREDICTOR = {"mnist_cnn": "mnist_cnn_bn"}          # classifier -> predictor backbone
LIMIT_AUGMENT = "pad:2"
LIMIT_INIT_MAX = 15
LIMIT_INIT_TARGET = "both"
# beta for LIMIT_G after the CE phase, when --predictor-loss auto chooses mse and fewer than half of
# the validation labels agree with the CE model (train/init_phase.py AUTO_HIGH_BETA_BELOW). With the L2 fit the
# predictor's best guess on a sample it has memorized is q = (onehot(y) + beta p) / (1 + beta), p
# the classifier's prediction: beta is how much the classifier's targets trust the CE-started
# model over the given label (soft bootstrapping). LIMIT_L (auto's choice when most labels are
# wrong, all measured on digits) keeps LIMIT_RECIPE's beta. Fashion-MNIST uniform 0.6, seed 0:
# beta 5 0.8386 (falls to 0.828 by epoch 59), 10 0.8442 (0.843 at 59), 20 0.841-0.845: a higher
# beta stops the late decline; 10, the smaller change, is kept. Where most labels agree it slows
# learning instead (pair 0.4: 0.8402 -> 0.8314), so there beta stays 5 (RESULTS.md, "Photos").
LIMIT_BETA_MSE = 10.0


def apply_recipe(cfg, card: dict, given: set) -> tuple:
    """--recipe auto under --method limit: the flags in LIMIT_RECIPE (and the predictor
    backbone and --augment) that the command line did not give (`given`: train.config.given)
    at the recipe's values. Returns (a new config, {flag: (old, new)} for what changed); `cfg`
    itself is frozen and stays as it was (train/resolve.py). Nothing changes with --recipe none
    or another method, so the old behaviour stays one flag away."""
    if cfg.recipe != "auto" or cfg.method != "limit":
        return cfg, {}
    want = dict(LIMIT_RECIPE)
    if "init_epochs" not in given and not cfg.init_from and cfg.predictor == "network":
        want["init_epochs"] = init_epochs(cfg.epochs)
        if want["init_epochs"]:
            want["init_target"] = LIMIT_INIT_TARGET
            want["predictor_loss"] = "auto"           # chosen from noisy validation at the switch
            want["predictor_transition"] = "auto"     # ... and the forward correction (init_phase.py)
    init_epochs_now = cfg.init_epochs if "init_epochs" in given else want.get("init_epochs", cfg.init_epochs)
    init_target = cfg.init_target if "init_target" in given else want.get("init_target", cfg.init_target)
    # a predictor started from the CE model needs the classifier's backbone
    predictor_from_ce = (cfg.init_from or init_epochs_now) and init_target in ("predictor", "both")
    if cfg.predictor == "network" and cfg.model in LIMIT_PREDICTOR and not predictor_from_ce:
        want["predictor_model"] = LIMIT_PREDICTOR[cfg.model]
    if card.get("augment", {}).get("crop", "none") == "none":
        want["augment"] = LIMIT_AUGMENT
    changed = {key: (getattr(cfg, key), value) for key, value in want.items()
               if key not in given and getattr(cfg, key) != value}
    return replace(cfg, **{key: new for key, (_, new) in changed.items()}), changed


def init_epochs(epochs: int) -> int:
    """The CE phase's longest length under the recipe: a quarter of the budget, at most
    LIMIT_INIT_MAX epochs (its real length is set by --init-patience on noisy validation);
    0 for runs too short to hold one (fewer than 4 epochs)."""
    return min(LIMIT_INIT_MAX, epochs // 4)


def beta_mse(changed: dict) -> float | None:
    """The beta LIMIT_G may run with after the CE phase (train/init_phase.py decides): LIMIT_BETA_MSE
    when the recipe set --beta (`changed`, apply_recipe's), else None (--beta as typed)."""
    return LIMIT_BETA_MSE if "beta" in changed else None
