"""Train a classifier on noisily labelled shards with LIMIT or a baseline.

    accelerate launch train/limit.py --data 'shards/clothing1m-{000..099}.tar' --model resnet50 \
        --method limit --out runs/c1m
    python train/limit.py --data 'shards/mnist-{000..009}.tar' --model mnist_cnn --epochs 3

Bad input prints one line on stderr and exits with code 2."""
import json
import math
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # weights come from local files, never a hub

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from models.backbones import ModelError  # noqa: E402
from models.ema import Ema  # noqa: E402
from pipeline import loader as data  # noqa: E402
from pipeline.shards import DataError, Part  # noqa: E402
from train import checkpoint, config, setup  # noqa: E402
from train.loop import Run, fit  # noqa: E402
from train.objectives import make_objective  # noqa: E402
from train.fano import run_summary  # noqa: E402
from train.report import write_curves  # noqa: E402

USER_ERRORS = (config.ConfigError, DataError, ModelError, checkpoint.CheckpointError)


def prepare_out(cfg) -> Path:
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_test.{os.getpid()}"     # one per process: ranks share --out
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise config.ConfigError(f"--out {out}: not writable ({e.strerror})") from None
    return out


def main(argv=None) -> int:
    cfg = config.parse(argv)
    acc = Accelerator(mixed_precision=cfg.mixed_precision or None,
                      log_with=cfg.log_with or None, project_dir=cfg.out)
    out = prepare_out(cfg)
    setup.seed_everything(cfg.seed)
    # ---- data ----
    ds = data.resolve(cfg.data, cfg.val_data, cfg.test_data)
    aug = data.spec_from_card(ds.card, cfg.image_size)
    part = Part(acc.process_index, acc.num_processes)
    backend, backend_note = data.choose_backend(cfg.backend)
    keep = data.subset_mask(ds, cfg.max_train_samples, cfg.seed)
    noise = data.noise_table(ds, cfg.noise, cfg.noise_pairs, cfg.noise_seed)
    if cfg.balance:
        keep = data.Balanced(ds, cfg.balance, cfg.seed, noise, keep)
    loaders = data.build_loaders(ds, aug, batch_size=cfg.batch_size, workers=cfg.workers, seed=cfg.seed,
                                 noise=noise, keep=keep, part=part, backend=backend,
                                 cache_eval=cfg.cache_eval)
    n_train = (keep.count() if cfg.balance else int(keep.sum()) if keep is not None
               else ds.card["splits"]["train"]["count"])
    steps = math.ceil(n_train / (cfg.batch_size * acc.num_processes))
    # ---- model ----
    model = setup.build_model(cfg, len(ds.classes), aug.channels)
    init_note = setup.init_from(model, cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = setup.build_optimizer(cfg, model)
    model, optimizer = acc.prepare(model, optimizer)   # never the streaming loaders (design.md 5)
    ema = Ema(acc.unwrap_model(model).classifier, cfg.model_ema_decay) if cfg.model_ema else None
    start, resume = 0, None
    if cfg.resume:
        where = out / "checkpoints" / "last" if cfg.resume == "auto" else Path(cfg.resume)
        try:
            resume = checkpoint.load_train_state(where, acc.unwrap_model(model), optimizer, ema)
        except checkpoint.CheckpointError as e:
            raise checkpoint.CheckpointError(f"--resume {cfg.resume}: {e}") from None
        start = resume["epoch"] if resume.get("in_epoch") else resume["epoch"] + 1
        if acc.is_main_process:
            checkpoint.trim_logs(out, start)      # lines written after that checkpoint are redone
    if acc.is_main_process:
        if not cfg.resume:
            for log in ("metrics.jsonl", "skipped.jsonl"):    # a fresh run starts fresh logs
                (out / log).unlink(missing_ok=True)
        (out / "config.json").write_text(cfg.to_json() + "\n")
        acc.print(f"{cfg.method} on {len(ds.classes)} classes, {n_train} train samples, "
                  f"{steps} steps/epoch, backend {backend_note}, device {acc.device}, "
                  f"precision {acc.mixed_precision}" + (f"; init {init_note}" if init_note else ""))
    if cfg.log_with:
        acc.init_trackers("limit", config={k: str(v) for k, v in vars(cfg).items()})
    norm = (tuple(ds.card["normalize"]["mean"]), tuple(ds.card["normalize"]["std"]))
    transition = (setup.fw_transition(cfg, acc.unwrap_model(model), loaders["train"].as_eval(), acc, norm)
                  if cfg.method == "fw" else None)
    objective = make_objective(cfg, transition)
    run = Run(cfg, acc, model, optimizer, objective, loaders, norm, steps, out, ema=ema)
    if resume:
        run.step, run.best, run.n_skipped = resume["step"], resume["best"], resume["n_skipped"]
    final = fit(run, start, resume if resume and resume.get("in_epoch") else None)
    if acc.is_main_process:
        # Theorem 2.1: the train error any learner keeping no label-noise information must make
        final.update(run_summary(noise.matrix.numpy(), final["train_acc_last"]))
        (out / "final.json").write_text(json.dumps(final, indent=1) + "\n")
        write_curves(out)                     # curves.png + summary.csv from metrics.jsonl
        acc.print(f"done: best val {final['best_val_acc']} at epoch {final['best_epoch']}, "
                  f"test {final['test_acc']}, last test {final['test_acc_last']}")
    acc.end_training()
    return 0


def cli(argv=None) -> int:
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f"limit: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
