"""One typed config: every flag, its default, unit and reason in one place. A Config is frozen:
train/resolve.py makes the run's one resolved value (the recipe applied, shard paths absolute)
before anything is built, and that value is written to OUT/config.json and into every
checkpoint; a change is a new value (dataclasses.replace), never an assignment."""
import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field

from train.objectives import REGISTRY


class ConfigError(ValueError):
    """A bad flag: one line on stderr, exit code 2."""


def opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)      # lists stay lists (config.json and resume compare them as JSON)
class Config:
    # data
    data: list = opt(None, "train shards: brace pattern(s) like 'shards/mnist-{000..009}.tar', or a folder with a card", nargs="+")
    val_data: list = opt(None, "validation shards (default: the card's val split)", nargs="+")
    test_data: list = opt(None, "test shards (default: the card's test split)", nargs="+")
    backend: str = opt("cpu", "JPEG/PNG decoding: cpu workers, dali, or auto (DALI on a GPU when present)", choices=["cpu", "dali", "auto"])
    workers: int = opt(2, "decode worker processes per rank")
    cache_eval: bool = opt(False, "keep val/test's decoded uint8 batches in RAM after the first epoch (MNIST's 22k: 17 MB; Clothing1M's 24k at 224 px: 3.6 GB)", action=argparse.BooleanOptionalAction)
    image_size: int = opt(0, "crop side in pixels (0: the dataset card's recipe)")
    max_train_samples: int = opt(0, "a seeded subset of the train split of this size (0: all)")
    balance: int = opt(0, "each epoch, this many train samples drawn class-balanced from the given labels (0: off)")
    noise: str = opt("none", "label noise on train and val: none | uniform:P | pair:P | matrix:FILE")
    noise_pairs: str = opt("", "pair noise as SRC>DST,... class names (default: CIFAR-10's pairs)")
    noise_seed: int = opt(0, "seed of the noise table (label = f(clean label, index, seed))")
    label_fixes: str = opt("", "a reviewer's label fixes: tools/review_labels.py's CSV, a key,label or index,label table, or a Label Studio JSON export; applied after --noise; 'drop' rows leave the sample out of training")
    # model
    model: str = opt("resnet50", "classifier: any timm model name, mnist_cnn or cifar_resnet34")
    pretrained: str = opt("", "local timm weights file for the backbone(s); the head is new")
    channels_last: bool = opt(True, "NHWC memory format (faster convolutions on GPU and AMX CPUs)", action=argparse.BooleanOptionalAction)
    # objective
    method: str = opt("ce", "objective (train/objectives.py REGISTRY)", choices=lambda: sorted(REGISTRY))
    predictor: str = opt("network", "LIMIT predictor: a second backbone, or a head on the classifier's detached features", choices=["network", "head"])
    predictor_model: str = opt("", "LIMIT predictor backbone (default: the classifier's)")
    predictor_loss: str = opt("mae", "LIMIT predictor distance: mse (LIMIT_G), mae (LIMIT_L), or auto: chosen when the CE phase of --init-epochs ends, from its noisy validation accuracy (train/init_phase.py; --method limit's recipe sets auto)", choices=["mse", "mae", "auto"])
    predictor_transition: str = opt("none", "LIMIT after the CE phase of --init-epochs: estimate, the predictor fits the given labels through the noise transition matrix estimated from the phase's best model on noisy validation (forward correction: the classifier then learns the clean labels' distribution); auto: only when that matrix shows structured noise (train/init_phase.py; --method limit's recipe sets auto); none: the labels as given", choices=["none", "estimate", "auto"])
    beta: float = opt(10.0, "LIMIT penalty on ||mu||^2 (--method limit's recipe sets 5 unless typed; --recipe none keeps 10; see README)")
    sample: bool = opt(False, "LIMIT +S: add noise to the predicted gradient", action=argparse.BooleanOptionalAction)
    sample_dist: str = opt("gaussian", "+S noise distribution", choices=["gaussian", "laplace"])
    sigma: float = opt(0.1, "+S noise standard deviation per logit")
    gce_q: float = opt(0.7, "GCE exponent q")
    # soft regularization (the paper's eq. 8) and CE + gradient noise
    softreg_lambda: float = opt(0.01, "softreg: weight of ||z||^2 ||onehot(y) - softmax(r(x))||^2 (paper grid 0.001-0.1); --beta weighs ||z||^2 ||softmax(a) - softmax(r)||^2", flag="--lambda", metavar="LAMBDA")
    grad_noise: str = opt("", "CE + GN / LN: independent noise on the gradient w.r.t. the logits (--method ce only)", choices=["", "gaussian", "laplace"])
    grad_noise_sigma: float = opt(0.0, "CE + GN / LN: per-logit noise std, on the per-sample gradient softmax - onehot (the reference's noise_std times the batch size)")
    transition: str = opt("", "FW: KxK transition matrix file (default: estimated from --init-from's predictions)")
    init_from: str = opt("", "run folder or checkpoint of a CE run (+init)")
    init_target: str = opt("predictor", "what +init starts from the CE model (--init-from, --init-epochs)", choices=["predictor", "classifier", "both"])
    init_epochs: int = opt(0, "LIMIT +init in one run: a cross-entropy phase of at most E epochs (counted in --epochs) whose best noisy-validation weights start --init-target, then LIMIT (train/init_phase.py; --method limit's recipe sets a quarter of --epochs, at most 15)", metavar="E")
    init_patience: int = opt(3, "the CE phase of --init-epochs ends early when noisy validation has not improved for this many epochs")
    predictor_warmup: float = opt(0.0, "LIMIT: the first E epochs train the predictor alone (the classifier's learning rate 0), so a classifier from +init is not pulled toward an untrained predictor's guesses", metavar="E")
    recipe: str = opt("auto", "auto: --method limit sets the flags it leaves at their defaults to its 60-epoch recipe (train/recipe.py LIMIT_RECIPE: --batch-size 64, --model-ema, the BN predictor for mnist_cnn, --augment pad:2 on digits; RESULTS.md 'Tuning'); none: the flags as given", choices=["auto", "none"])
    augment: str = opt("card", "train augmentation: the dataset card's recipe, none, or pad:N (pad N px, random crop back: a random translation of up to N px)", choices=["card", "none", "pad:1", "pad:2", "pad:3", "pad:4"])
    # optimization
    epochs: int = opt(10, "passes over the train split")
    patience: int = opt(0, "early stopping: end when validation has not improved for this many epochs (0: off)")
    batch_size: int = opt(256, "samples per step per process")
    optimizer: str = opt("adam", "optimizer", choices=["adam", "sgd"])
    lr: float = opt(1e-3, "peak learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(0.0, "decoupled (AdamW) or L2 (SGD) weight decay")
    sched: str = opt("const", "learning-rate schedule over steps", choices=["const", "cosine"])
    warmup_epochs: float = opt(0.0, "linear warm-up length in epochs, at the start and again after "
                                    "+init's switch (where the optimizer's moments restart)")
    model_ema: bool = opt(False, "also keep an exponential moving average of the classifier (timm's --model-ema); val/test accuracy, model selection and early stopping use it", action=argparse.BooleanOptionalAction)
    model_ema_decay: float = opt(0.998, "EMA decay per optimizer step (averages over ~1/(1-decay) steps)")
    clip_grad: float = opt(0.0, "clip the global gradient norm (0: off)")
    mixed_precision: str = opt("", "no | bf16 | fp16 (default: accelerate launch's setting)", choices=["", "no", "bf16", "fp16"])
    # run
    out: str = opt("runs/run", "run folder: config.json, metrics.jsonl, final.json, checkpoints/")
    seed: int = opt(0, "seed of weights, augmentation, shuffling and the train subset")
    resume: str = opt("", "resume from a checkpoint folder, or 'auto' for OUT/checkpoints/last")
    overwrite: bool = opt(False, "start afresh in an --out that holds another run, deleting its logs and checkpoints (without it such a folder is refused)", action="store_true")
    trust_urls: bool = opt(False, "let shard URLs read from files (a dataset card's shard list) be pipe: or remote URLs; pipe: runs a shell command, so only for files you wrote", action="store_true")
    save_every: int = opt(0, "also checkpoint every N optimizer steps inside an epoch (0: epoch ends only)")
    log_interval: float = opt(-1.0, "seconds between the plain progress lines printed when stderr is not a terminal (SLURM, | tee); -1: LIMIT_PROGRESS_INTERVAL or 30", metavar="S")
    log_with: str = opt("", "accelerate tracker, e.g. tensorboard (nothing is contacted unless asked)")
    max_skip_frac: float = opt(0.01, "stop (exit 2) when more than this fraction of a split's samples is lost in an epoch: damaged samples, cut-off or missing shards (1: never)")

    def to_json(self, **extra) -> str:
        """The resolved flags; `extra` adds what the run derived from them (skipped when None)."""
        return json.dumps({**dataclasses.asdict(self), **{k: v for k, v in extra.items() if v is not None}},
                          indent=1, sort_keys=True)


class OneLineParser(argparse.ArgumentParser):
    """argparse prints its usage block on errors; users get one line naming the flag."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description="Train a classifier on noisy labels with LIMIT or a baseline.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(Config):
        meta = dict(f.metadata)
        flag = meta.pop("flag", "--" + f.name.replace("_", "-"))   # a field may name its flag: --lambda
        kw = {"default": f.default, "help": meta.pop("help")}
        kw.update(meta)
        if callable(kw.get("choices")):        # read when the parser is built: the objective registry
            kw["choices"] = kw["choices"]()
        if "action" not in meta and "nargs" not in meta:
            kw["type"] = f.type if f.type in (int, float, str) else str
        p.add_argument(flag, dest=f.name, **kw)
    return p


POSITIVE = ("epochs", "batch_size", "lr")
NON_NEGATIVE = ("patience", "balance", "save_every", "workers", "image_size", "max_train_samples", "beta", "sigma", "weight_decay",
                "warmup_epochs", "clip_grad", "grad_noise_sigma", "predictor_warmup", "init_epochs", "init_patience")
# Upper bounds on sizes a received config.json can set: image_size 10^6 asks for a 1 TB batch.
# Each is far above any real use (a 2048 px crop is 4x ImageNet's largest common recipe).
AT_MOST = {"image_size": 2048, "batch_size": 1 << 16, "workers": 256, "epochs": 100_000}


def flag_of(name: str) -> str:
    """The command-line spelling of a config field (a field may name its own: --lambda)."""
    meta = Config.__dataclass_fields__[name].metadata
    return meta.get("flag", "--" + name.replace("_", "-"))


def validate(cfg: Config, given: set | frozenset = frozenset()) -> Config:
    """The checks every config passes, a command line's or a saved config.json's; `given`
    (the fields the command line typed, given()) adds the check of which method reads them."""
    for f in dataclasses.fields(cfg):      # inf and nan parse as floats, and train to NaN
        if f.type is float and not math.isfinite(getattr(cfg, f.name)):
            raise ConfigError(f"{flag_of(f.name)} must be a finite number, got {getattr(cfg, f.name)}")
    if cfg.overwrite and cfg.resume:
        raise ConfigError("--overwrite starts afresh and --resume continues: pass one of them")
    for name in POSITIVE:
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(cfg, name)}")
    for name in NON_NEGATIVE:
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    for name, most in AT_MOST.items():
        if getattr(cfg, name) > most:
            raise ConfigError(f"--{name.replace('_', '-')} must be <= {most}, got {getattr(cfg, name)}")
    if not cfg.data:
        raise ConfigError("--data is required: train shards as a brace pattern or a folder")
    if not 0 < cfg.gce_q <= 1:
        raise ConfigError(f"--gce-q must lie in (0, 1], got {cfg.gce_q}")
    if not 0 < cfg.model_ema_decay < 1:
        raise ConfigError(f"--model-ema-decay must be in (0, 1), got {cfg.model_ema_decay}")
    if cfg.softreg_lambda < 0:
        raise ConfigError(f"--lambda must be >= 0, got {cfg.softreg_lambda}")
    if cfg.init_epochs and cfg.init_from:
        raise ConfigError("--init-epochs trains the CE model in this run and --init-from reads one: pass one of them")
    if cfg.init_epochs and cfg.init_epochs >= cfg.epochs:
        raise ConfigError(f"--init-epochs {cfg.init_epochs} leaves no LIMIT epoch in --epochs {cfg.epochs}")
    if cfg.init_epochs and cfg.predictor == "head" and cfg.init_target != "classifier":
        raise ConfigError("--init-epochs with --predictor head: only --init-target classifier (the head has no backbone)")
    if cfg.grad_noise and not cfg.grad_noise_sigma > 0:
        raise ConfigError("--grad-noise needs --grad-noise-sigma > 0")
    if not 0 <= cfg.max_skip_frac <= 1:
        raise ConfigError(f"--max-skip-frac must lie in [0, 1], got {cfg.max_skip_frac}")
    if cfg.method not in REGISTRY:
        raise ConfigError(f"--method {cfg.method!r}: not one of {', '.join(sorted(REGISTRY))}")
    if REGISTRY[cfg.method].fine_tunes and not cfg.init_from:
        raise ConfigError(f"--method {cfg.method} fine-tunes a CE model: pass --init-from RUN")
    check_owned(cfg.method, given)        # last: a bad value is named as such, under any method
    return cfg


def check_owned(method: str, given) -> None:
    """A flag typed on the command line that only other methods read (their REGISTRY entry's
    `flags`) is refused: the run would silently ignore it (--beta under --method ce). Only what
    was typed counts, at any value: a value set by the recipe or read from a saved config.json
    is no user's request, and an older run's config.json that holds one must stay readable."""
    for name in sorted(given):
        owners = sorted(m for m, obj in REGISTRY.items() if name in obj.flags)
        if owners and method not in owners:
            raise ConfigError(f"{flag_of(name)} is read by --method {' and '.join(owners)} only: "
                              f"it needs --method {' or '.join(owners)}, got {method}")


def check_resolved(cfg: Config) -> None:
    """What only holds once the recipe (train/recipe.py) has set its flags."""
    if cfg.predictor_transition != "none" and cfg.method == "limit" and not cfg.init_epochs:
        raise ConfigError(f"--predictor-transition {cfg.predictor_transition} takes the matrix from the CE phase: "
                          "it needs --init-epochs > 0")
    if cfg.predictor_loss == "auto" and cfg.method == "limit" and not cfg.init_epochs:
        raise ConfigError("--predictor-loss auto is chosen at the end of the CE phase: it needs --init-epochs > 0 "
                          "(--method limit's recipe sets it for runs of 4 epochs or more)")


def given(argv=None) -> set[str]:
    """The config fields the command line set, whatever their values (a recipe must not
    replace a flag the user typed, even at its default value)."""
    p = build_parser()
    for action in p._actions:           # every default suppressed: only what was typed is set
        action.default = argparse.SUPPRESS
    return set(vars(p.parse_args(argv)))


def parse(argv=None) -> Config:
    """The command line as typed, checked (no recipe yet: train/resolve.py adds it)."""
    args = build_parser().parse_args(argv)
    return validate(Config(**vars(args)), given(argv))
