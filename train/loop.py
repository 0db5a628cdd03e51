"""The training loop: one plain loop over epochs and steps; evaluation, logging and
checkpointing in marked blocks."""
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline.batch import to_device
from train import checkpoint
from train.metrics import Meter
from train.setup import lr_at


@dataclass
class Run:
    """Everything the loop touches, built once by train/limit.py."""
    cfg: object
    accelerator: object
    model: torch.nn.Module              # prepared (possibly DDP-wrapped) LimitNet
    optimizer: object
    objective: object
    loaders: dict                       # split -> pipeline.loader.Loader
    norm: tuple                         # (mean, std) of the dataset card
    steps_per_epoch: int
    out: Path
    skipped: list = field(default_factory=list)

    def device_batch(self, batch):
        return to_device(batch, self.accelerator.device, *self.norm, self.cfg.channels_last)


def train_epoch(run: Run, epoch: int) -> dict:
    cfg, acc, model = run.cfg, run.accelerator, run.model
    model.train()
    meter, wait, t0 = Meter(acc.device), 0.0, time.perf_counter()
    bar = tqdm(total=run.loaders["train"].steps(epoch), desc=f"epoch {epoch}", disable=not acc.is_main_process, leave=False)
    step = epoch * run.steps_per_epoch
    t_wait = time.perf_counter()
    for batch in run.loaders["train"](epoch):
        wait += time.perf_counter() - t_wait
        run.skipped += [(*s, epoch) for s in batch.skipped]
        if len(batch) == 0:
            t_wait = time.perf_counter()
            continue
        for g in run.optimizer.param_groups:     # schedule: a pure function of the step
            g["lr"] = lr_at(step, cfg.epochs * run.steps_per_epoch,
                            int(cfg.warmup_epochs * run.steps_per_epoch), cfg.lr, cfg.sched)
        b = run.device_batch(batch)
        with acc.autocast():
            out = model(b.images)
            loss, _ = run.objective(out, b.labels)
        acc.backward(loss * 0 if b.pad else loss)     # a pad step only keeps DDP ranks in step
        if cfg.clip_grad:
            acc.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        if not b.pad:
            meter.update(out.logits, b.labels, b.clean, loss)
        step += 1
        bar.update()
        t_wait = time.perf_counter()
    bar.close()
    wall = time.perf_counter() - t0
    res = meter.result(acc.reduce)
    return {"train_loss": res["loss"], "train_acc": res["acc"], "train_acc_clean": res["acc_clean"],
            "train_acc_flipped": res["acc_flipped"], "train_acc_kept": res["acc_kept"],
            "samples_seen": res["n"], "images_per_s": res["n"] / wall,
            "data_wait_frac": wait / wall, "train_s": wall}


@torch.no_grad()
def evaluate(run: Run, split: str, epoch: int = 0) -> dict:
    """Accuracy of the classifier alone against the split's given and clean labels."""
    if split not in run.loaders:
        return {}
    model = run.accelerator.unwrap_model(run.model)
    model.eval()
    meter = Meter(run.accelerator.device)
    for batch in run.loaders[split](epoch):
        run.skipped += [(*s, epoch) for s in batch.skipped]
        if len(batch):
            b = run.device_batch(batch)
            with run.accelerator.autocast():
                meter.update(model.classifier(b.images), b.labels, b.clean)
    res = meter.result(run.accelerator.reduce)
    return {f"{split}_acc": res["acc"], f"{split}_acc_clean": res["acc_clean"]}


def fit(run: Run, start_epoch: int = 0, best: dict | None = None) -> dict:
    """Train from start_epoch to cfg.epochs; returns final.json's content."""
    cfg, acc = run.cfg, run.accelerator
    best = best or {"val_acc": -1.0}
    t_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        row = {"epoch": epoch, **train_epoch(run, epoch), **evaluate(run, "val", epoch),
               **evaluate(run, "test", epoch)}
        row["samples_skipped"] = len(run.skipped)
        row["wall_s"] = time.perf_counter() - t_start
        row["lr"] = run.optimizer.param_groups[0]["lr"]
        # ---- select on the (noisy) validation split: the paper's protocol ----
        score = row.get("val_acc") if row.get("val_acc") is not None else -row["train_loss"]
        improved = score > best["val_acc"]
        if improved:
            best = {"val_acc": score, "epoch": epoch, "test_acc": row.get("test_acc")}
        # ---- log and save (main process only) ----
        if acc.is_main_process:
            with open(run.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            meta = {"epoch": epoch, "metrics": row, "best": best, "config": vars(cfg)}
            model = acc.unwrap_model(run.model)
            checkpoint.save(run.out / "checkpoints" / "last", model, run.optimizer, meta)
            if improved:
                checkpoint.save(run.out / "checkpoints" / "best", model, run.optimizer, meta)
            acc.print(_line(row))
        acc.log(row, step=epoch)
    return {"best_val_acc": best["val_acc"], "best_epoch": best.get("epoch"),
            "test_acc": best.get("test_acc"), "test_acc_last": row.get("test_acc"),
            "epochs": cfg.epochs, "samples_skipped": len(run.skipped),
            "wall_s": time.perf_counter() - t_start}


def _line(row: dict) -> str:
    f = lambda k: f"{row[k]:.4f}" if row.get(k) is not None else "-"  # noqa: E731
    return (f"epoch {row['epoch']}: loss {f('train_loss')} train_acc {f('train_acc')} "
            f"flipped {f('train_acc_flipped')} val {f('val_acc')} test {f('test_acc')} "
            f"{row['images_per_s']:.0f} img/s wait {row['data_wait_frac']:.2f}")
