"""Train a classifier on noisily labelled shards with LIMIT or a baseline.

    accelerate launch train/limit.py --data 'shards/clothing1m-{000..099}.tar' --model resnet50 \
        --method limit --out runs/c1m
    python train/limit.py --data 'shards/mnist-{000..009}.tar' --model mnist_cnn --epochs 3

Bad input prints one line on stderr and exits with code 2."""
import json
import math
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")   # weights come from local files, never a hub

import torch  # noqa: E402
from accelerate import Accelerator  # noqa: E402

from models.backbones import ModelError  # noqa: E402
from models.ema import Ema  # noqa: E402
from pipeline import loader as data, remote, safe_io  # noqa: E402
from pipeline.shards import DataError, Part, absolute_specs  # noqa: E402
from train import checkpoint, config, init_phase, runfolder, setup  # noqa: E402
from train.loop import Diverged, Run, fit, stop_on_interrupt  # noqa: E402
from train.objectives import REGISTRY, make_objective  # noqa: E402
from train.clean_estimate import MAX_SE  # noqa: E402
from train.fano import run_summary  # noqa: E402
from train.recipe import beta_mse  # noqa: E402
from train.resolve import Resolved, resolve  # noqa: E402
from train.report import write_curves  # noqa: E402

USER_ERRORS = (config.ConfigError, DataError, ModelError, checkpoint.CheckpointError, Diverged)


def prepare_out(cfg) -> Path:
    out = Path(cfg.out)
    try:
        safe_io.out_dir(out)                            # a link at --out is refused
        with tempfile.TemporaryFile(dir=out):            # a fresh name: a fixed probe could be a link
            pass
    except OSError as e:
        raise config.ConfigError(f"--out {out}: not writable ({e.strerror})") from None
    return out


def main(argv=None) -> int:
    res = resolve(argv)               # the one frozen config, recipe included, before anything is built
    cfg = res.cfg
    acc = Accelerator(mixed_precision=cfg.mixed_precision or None,
                      log_with=cfg.log_with or None, project_dir=cfg.out)
    out = prepare_out(cfg)
    lock = runfolder.RunLock(out).acquire() if acc.is_main_process else None
    try:
        return train(res, acc, out)
    finally:
        if lock:
            lock.release()


def train(res: Resolved, acc, out: Path) -> int:
    """The run, with --out locked: refuse or replace another run, or continue this one."""
    cfg, ds, recipe = res.cfg, res.ds, res.recipe
    runfolder.claim(out, cfg.resume, cfg.overwrite, acc.is_main_process)
    if cfg.resume == "auto" and (final := runfolder.finished(out, cfg.epochs)):
        acc.print(f"{out}: the run finished ({final['epochs']} epochs"
                  f"{', stopped early' if final.get('early_stopped') else ''}); nothing to do "
                  "(raise --epochs to continue it)")
        return 0
    setup.seed_everything(cfg.seed)
    # ---- data ----
    rd = data.run_data(ds, cfg, part=Part(acc.process_index, acc.num_processes))   # as rank_labels reads it
    aug, noise, fixes, loaders, backend_note = rd.aug, rd.noise, rd.fixes, rd.loaders, rd.backend_note
    n_train = rd.count("train")
    steps = math.ceil(n_train / (cfg.batch_size * acc.num_processes))
    # ---- model ----
    model = setup.build_model(cfg, len(ds.classes), aug.channels)
    init_note = setup.init_from(model, cfg)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = setup.build_optimizer(cfg, model)
    model, optimizer = acc.prepare(model, optimizer)   # never the streaming loaders (docs/architecture.md section 5)
    ema = Ema(acc.unwrap_model(model).classifier, cfg.model_ema_decay) if cfg.model_ema else None
    start, resume = 0, None
    if cfg.resume:
        resume = resume_state(cfg, out, acc, model, optimizer, ema)
        start = resume["epoch"] if resume.get("in_epoch") else resume["epoch"] + 1
    if acc.is_main_process:
        if not cfg.resume:
            for log in ("metrics.jsonl", "skipped.jsonl"):    # a fresh run starts fresh logs
                (out / log).unlink(missing_ok=True)
        runfolder.write_atomic(out / "config.json", cfg.to_json(label_fixes_applied=fixes_record(fixes)) + "\n")
        if fixes:
            acc.print(f"label fixes from {fixes.path}: {fixes.n_relabelled} relabelled, {fixes.n_dropped} dropped, "
                      f"{fixes.n_kept} confirmed")
        acc.print(f"{cfg.method} on {len(ds.classes)} classes, {n_train} train samples, "
                  f"{steps} steps/epoch, backend {backend_note}, device {acc.device}, "
                  f"precision {acc.mixed_precision}" + (f"; init {init_note}" if init_note else "")
                  + (f"; --recipe auto set {({k: v[1] for k, v in recipe.items()})}" if recipe else ""))
    if cfg.log_with:
        acc.init_trackers("limit", config={k: str(v) for k, v in vars(cfg).items()})
    norm = (tuple(ds.card["normalize"]["mean"]), tuple(ds.card["normalize"]["std"]))
    transition = (setup.fw_transition(cfg, acc.unwrap_model(model), loaders["train"].as_eval(), acc, norm)
                  if REGISTRY[cfg.method].transition else None)
    objective = make_objective(cfg, transition)
    phase = (init_phase.InitPhase(cfg.init_epochs, cfg.init_patience, cfg.init_target, auto_loss=cfg.predictor_loss == "auto",
                                  beta_mse=beta_mse(recipe), transition_mode=cfg.predictor_transition)
             if cfg.init_epochs else None)
    run = Run(cfg, acc, model, optimizer, objective, loaders, norm, steps, out, ema=ema, init=phase,
              method_objective=objective)
    if resume:
        run.step, run.best, run.n_skipped = resume["step"], resume["best"], resume["n_skipped"]
        if phase:
            phase.load(resume.get("init_phase"))
    with stop_on_interrupt():
        final = fit(run, start, resume if resume and resume.get("in_epoch") else None)
    if acc.is_main_process:
        # Theorem 2.1: the train error any learner keeping no label-noise information must make
        final.update(run_summary(noise.matrix.numpy(), final["train_acc_last"]))
        if fixes:
            final["label_fixes_applied"] = fixes_record(fixes)
        runfolder.write_atomic(out / "final.json", json.dumps(final, indent=1) + "\n")
        write_curves(out)                     # curves.png + summary.csv from metrics.jsonl
        acc.print(f"done: best val {final['best_val_acc']} at epoch {final['best_epoch']} ({estimate_words(final)}), "
                  f"test {final['test_acc']}, last test {final['test_acc_last']}")
    acc.end_training()
    return 0


def fixes_record(fixes) -> dict | None:
    """What --label-fixes did, for config.json and final.json."""
    if fixes is None:
        return None
    return {"file": os.path.abspath(fixes.path), "sha256": fixes.sha256, "relabelled": fixes.n_relabelled,
            "dropped": fixes.n_dropped, "kept": fixes.n_kept}


def resume_state(cfg, out: Path, acc, model, optimizer, ema) -> dict:
    """Load a checkpoint into the run after checking that it is the same experiment; the safe
    changes (runfolder.SAFE_ON_RESUME) are printed and recorded in OUT/resumes.jsonl."""
    where = out / "checkpoints" / "last" if cfg.resume == "auto" else Path(cfg.resume)
    try:
        folder = checkpoint.locate(where)
        saved = checkpoint.read_meta(folder).get("config")
        if not isinstance(saved, dict):
            raise checkpoint.CheckpointError(f"checkpoint {folder}: meta.json has no config")
        saved = {**saved, **{k: absolute_specs(saved.get(k)) for k in ("data", "val_data", "test_data")}}
        in_epoch = bool(checkpoint.read_meta(folder).get("in_epoch"))
        safe, refused = runfolder.config_changes(saved, vars(cfg), in_epoch)
        if refused:
            raise config.ConfigError(f"--resume {cfg.resume}: these flags differ from the checkpoint's run and would "
                                     f"make it another experiment: {'; '.join(refused)} (use a new --out)")
        meta = checkpoint.load_train_state(folder, acc.unwrap_model(model), optimizer, ema)
    except checkpoint.CheckpointError as e:
        raise checkpoint.CheckpointError(f"--resume {cfg.resume}: {e}") from None
    start = meta["epoch"] if meta.get("in_epoch") else meta["epoch"] + 1
    if start >= cfg.epochs:               # nothing to train: fit() would write an empty final.json
        raise config.ConfigError(f"--resume {cfg.resume}: the checkpoint ends epoch {start - 1}; "
                                 f"--epochs {cfg.epochs} leaves nothing to train (raise --epochs)")
    if acc.is_main_process:
        checkpoint.trim_logs(out, start)      # lines written after that checkpoint are redone
        if safe:
            acc.print("resume: " + ", ".join(f"--{k.replace('_', '-')} {a!r} -> {b!r}" for k, (a, b) in safe.items()))
            with safe_io.open_append(out / "resumes.jsonl") as f:
                f.write(json.dumps({"epoch": start, "changed": safe}) + "\n")
    return meta


def estimate_words(final: dict) -> str:
    """The clean-accuracy estimate at the best epoch for the closing line, or why there is none."""
    est, se = final.get("best_val_acc_clean_est"), final.get("best_val_acc_clean_est_se")
    if est is not None:
        return f"clean accuracy estimated from it: {est}" + (f" +- {se}" if se is not None else "")
    if se is not None and se >= MAX_SE:                # stored rounded: 0.10004 reads 0.1
        return f"no clean-accuracy estimate: its standard error {se:.3g} is too large (limit {MAX_SE})"
    return "no clean-accuracy estimate"


def cli(argv=None) -> int:
    try:
        return main(argv)
    except (*USER_ERRORS, *remote.storage_errors()) as e:
        print(f"limit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(("\n" if sys.stderr.isatty() else "")          # below the progress bar
              + "limit: interrupted; the last checkpoint is kept (continue with --resume auto)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
