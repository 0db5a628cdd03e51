"""The training loop: one plain loop over epochs and steps; evaluation, logging and
checkpointing in marked blocks. A checkpoint inside an epoch (--save-every) records where each
data worker stopped, so a resumed run takes exactly the same steps as an uninterrupted one."""
import contextlib
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object

from pipeline import safe_io
from pipeline import progress
from pipeline.batch import to_device
from pipeline.shards import DataError
from train import checkpoint, clean_estimate, init_phase
from train.metrics import Meter
from train.step import train_step


@dataclass
class Run:
    """Everything the loop touches, built once by train/limit.py."""
    cfg: object
    accelerator: object
    model: torch.nn.Module              # prepared (possibly DDP-wrapped) FusedNet
    optimizer: object
    objective: object
    loaders: dict                       # split -> pipeline.loader.Loader
    norm: tuple                         # (mean, std) of the dataset card
    steps_per_epoch: int                # for the LR schedule's length
    out: Path
    step: int = 0                       # optimizer steps taken, all epochs
    best: dict = field(default_factory=lambda: {"score": float("-inf")})
    skipped: list = field(default_factory=list)   # (shard, key, reason, epoch) this session
    n_skipped: int = 0                  # samples skipped in this epoch's passes (train, val, test)
    ema: object = None                  # models.ema.Ema of the classifier (--model-ema)
    init: init_phase.InitPhase | None = None      # --init-epochs: the CE phase before LIMIT
    method_objective: object = None     # the --method's objective; `objective` is this epoch's

    @property
    def total_steps(self) -> int:       # the LR schedule's length
        return self.cfg.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        return int(self.cfg.warmup_epochs * self.steps_per_epoch)

    @property
    def switch_step(self) -> int:       # +init's first LIMIT step, once decided (0: none); the warm-up restarts there
        return self.init.end * self.steps_per_epoch if self.init and self.init.end else 0

    @property
    def predictor_warmup_steps(self) -> int:     # steps with the classifier held (--predictor-warmup)
        return int(self.cfg.predictor_warmup * self.steps_per_epoch)

    def device_batch(self, batch):
        return to_device(batch, self.accelerator.device, *self.norm, self.cfg.channels_last)

    def note_skips(self, records, epoch):
        self.skipped += [(*s, epoch) for s in records]
        self.n_skipped += sum(1 for s in records if s[1])    # a key: one sample lost

    def save(self, name: str, meta: dict, position: dict | None = None) -> None:
        """All ranks call it; the main process writes. A mid-epoch checkpoint (meta's in_epoch)
        records `position`, the Batch.position of the batch this rank last trained on, as
        meta["position"]: every rank's, gathered."""
        meta = {**meta, "step": self.step, "best": self.best, "n_skipped": self.n_skipped,
                "config": vars(self.cfg), "init_phase": self.init.state() if self.init else None}
        if meta.get("in_epoch"):
            meta["position"] = gather_object([position])
        if self.accelerator.is_main_process:
            checkpoint.save(self.out / "checkpoints" / name, self.accelerator.unwrap_model(self.model),
                            self.optimizer, meta, self.ema)


def train_epoch(run: Run, epoch: int, resume: dict | None = None) -> dict:
    acc, loader = run.accelerator, run.loaders["train"]
    run.model.train()
    meter, wait, t0 = Meter(acc.device), 0.0, time.perf_counter()
    if resume:                                             # inside an epoch: its sums so far
        meter.load(resume["meter"])
    position = resume["position"][acc.process_index] if resume else None
    first_skip = len(run.skipped)                          # --max-skip-frac: this epoch's records
    bar = progress.bar(total=loader.steps(epoch), desc=f"epoch {epoch}", unit="step", disable=not acc.is_main_process,
                       leave=False, stats=lambda: meter.running(acc.num_processes),   # lines when not a terminal
                       interval=run.cfg.log_interval if run.cfg.log_interval >= 0 else None)
    t_wait = time.perf_counter()
    for batch in loader(epoch, start=position):
        stop_if_asked()
        wait += time.perf_counter() - t_wait
        run.note_skips(batch.skipped, epoch)
        if len(batch):
            train_step(run, run.device_batch(batch), meter)
            bar.update()
            if run.cfg.save_every and run.step % run.cfg.save_every == 0:          # ---- mid-epoch save
                check_finite(run, meter, epoch)
                run.save("last", {"epoch": epoch, "in_epoch": True, "meter": meter.state()}, batch.position)
        t_wait = time.perf_counter()
    bar.close()
    wall = time.perf_counter() - t0
    check_finite(run, meter, epoch)
    if acc.num_processes > 1:                  # the same statistics on every rank before the reduce
        meter.align(sorted({k for keys in gather_object([sorted(meter.stats)]) for k in keys}))
    res = meter.result(acc.reduce)
    check_skips(run, "train", epoch, res["n"], first_skip)
    # train_loss: cross-entropy of the classifier on the given labels, for every method; the
    # objective's own value and statistics keep their names (train_objective, train_mu_sq, ...)
    return {"train_loss": res["ce"], "train_loss_clean": res["ce_clean"], "train_acc": res["acc"],
            "train_acc_clean": res["acc_clean"], "train_acc_flipped": res["acc_flipped"],
            "train_acc_kept": res["acc_kept"], **{f"train_{k}": v for k, v in res["stats"].items()},
            "samples_seen": res["n"], "images_per_s": res["n"] / wall,
            "data_wait_frac": wait / wall, "train_s": wall}


# ---- Ctrl-C ----
# Python raises KeyboardInterrupt wherever the main thread is; inside a fork hook or a
# finalizer (a DataLoader starting its workers) it is printed as "Exception ignored" and lost,
# and training goes on. So the first SIGINT only asks; the loop stops at the next batch.
_STOP = {"asked": False}


def _ask_stop(signum, frame):
    if _STOP["asked"]:
        raise KeyboardInterrupt             # a second Ctrl-C: now
    _STOP["asked"] = True


def stop_if_asked() -> None:
    if _STOP["asked"]:
        raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_interrupt():
    _STOP["asked"] = False
    previous = signal.signal(signal.SIGINT, _ask_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _STOP["asked"] = False
# ---- end Ctrl-C ----


class Diverged(ValueError):
    """The training loss became inf or NaN: one line, exit code 2, the last good checkpoint kept."""


def check_finite(run: Run, meter: Meter, epoch: int) -> None:
    """Before anything is saved: weights that produced a non-finite loss are never written over
    the last good checkpoint. Read at save points only (one host sync each, not per step);
    every rank reaches the same verdict from the reduced sums, so all stop together."""
    if meter.finite(run.accelerator.reduce):
        return
    last = run.out / "checkpoints" / "last"
    raise Diverged(f"epoch {epoch}, step {run.step}: the training loss is not finite (diverged); "
                   f"nothing saved from this epoch, the last good checkpoint is "
                   f"{last if last.exists() else 'none'}; lower --lr or set --clip-grad")


def selection_score(run: Run, epoch: int, row: dict) -> float:
    """What model selection maximizes: noisy validation accuracy (train accuracy without a
    validation split). After a switch that kept a T (--predictor-transition) the classifier
    predicts clean labels, which under pair-like noise agree *less* with the noisy ones than
    the noisy labels' own argmax does, so there the score is the clean accuracy estimated
    through the phase's T (evaluate); the phase's best is re-scored the same way at the switch."""
    if fixed_transition(run, epoch) is not None and row.get("val_acc_clean_est") is not None:
        return row["val_acc_clean_est"]
    return row.get("val_acc") if row.get("val_acc") is not None else row["train_acc"]


def switch_score(best: dict) -> float:
    """The CE phase's best epoch's score once the switch keeps its T: its clean accuracy
    estimated through that T, as every later epoch's (evaluate). Not its counted estimate, a
    different estimator with its own noise (SE ~0.07 on MNIST pair noise): one lucky draw there
    outscored every LIMIT epoch of a run that reached 0.99 and kept the CE epoch's 0.972.
    Where T is near singular (no estimate through it) later epochs fall back to noisy
    validation accuracy, and so does this one: its phase score."""
    if "switch_score" not in best:                # a checkpoint from before this score was kept
        est = best.get("val_acc_clean_est")
        return est if est is not None else best["score"]
    return best["switch_score"] if best["switch_score"] is not None else best["score"]


def fixed_transition(run: Run, epoch: int) -> list | None:
    """The CE phase's T, for an epoch that trains with it (--predictor-transition)."""
    return run.init.transition if run.init and not run.init.active(epoch) else None


@torch.no_grad()
def evaluate(run: Run, split: str, epoch: int = 0) -> dict:
    """Accuracy of the classifier alone (its EMA under --model-ema) against the split's
    given and clean labels; on the validation split also the clean accuracy estimated from
    the given labels alone (train/clean_estimate.py)."""
    if split not in run.loaders:
        return {}
    run.model.eval()
    classifier = run.ema.module if run.ema is not None else run.accelerator.unwrap_model(run.model).classifier
    meter = Meter(run.accelerator.device)
    first_skip = len(run.skipped)
    probs, given = [], []                      # val only: (N, K) softmax and (N,) given labels
    for batch in run.loaders[split](epoch):
        stop_if_asked()
        run.note_skips(batch.skipped, epoch)
        if len(batch):
            b = run.device_batch(batch)
            with run.accelerator.autocast():
                logits = classifier(b.images)
            meter.update(logits, b.labels, b.clean)
            if split == "val":
                probs.append(logits.float().softmax(1).cpu())
                given.append(b.labels.cpu())
    res = meter.result(run.accelerator.reduce)
    check_skips(run, split, epoch, res["n"], first_skip)
    row = {f"{split}_acc": res["acc"], f"{split}_acc_clean": res["acc_clean"], f"{split}_loss": res["ce"]}
    if probs:
        # Every rank gets every share and computes the same estimate (its bootstrap is seeded):
        # selection and the +init switch read it, so the ranks must agree, and this costs no
        # second collective (7 s at K = 1,000, tens of ms at K = 10).
        parts = gather_object([(torch.cat(probs).numpy(), torch.cat(given).numpy())])
        probs_all, given_all = np.concatenate([p for p, _ in parts]), np.concatenate([g for _, g in parts])
        if (fixed := fixed_transition(run, epoch)) is None:
            est = clean_estimate.estimate(probs_all, given_all)
        else:                                   # through the T the predictor fits: nothing to count or redraw
            acc_est, cond = clean_estimate.clean_accuracy(probs_all.argmax(1), given_all, np.asarray(fixed))
            est = {"acc_clean_est": acc_est, "acc_clean_est_se": None,
                   "transition_condition": round(cond, 2) if np.isfinite(cond) else None,
                   "transition": None}
        row.update({"val_acc_clean_est": est["acc_clean_est"], "val_acc_clean_est_se": est["acc_clean_est_se"],
                    "val_transition_condition": est["transition_condition"]})
        if run.init and run.init.wants_transition(epoch) and est["transition"] is not None:
            t = np.round(est["transition"], 6)
            row["val_transition"] = t.tolist()
            # this epoch scored as LIMIT's epochs will be if the switch keeps this T: the one
            # score that may stand against theirs (selection_score)
            row["val_acc_through_transition"] = clean_estimate.clean_accuracy(probs_all.argmax(1), given_all, t)[0]
    return row


def fit(run: Run, start_epoch: int = 0, resume: dict | None = None) -> dict:
    """Train from start_epoch (inside it when `resume` is a mid-epoch checkpoint's meta)."""
    cfg, acc = run.cfg, run.accelerator
    t_start = time.perf_counter()
    row, early = {}, False
    for epoch in range(start_epoch, cfg.epochs):
        mid_epoch = bool(resume) and epoch == start_epoch
        if not mid_epoch:                              # a mid-epoch resume keeps the epoch's count
            run.n_skipped = 0                          # per epoch: val/test skips are not recounted
        if run.init:                                   # ---- +init: the CE phase, then the switch ----
            if epoch == run.init.end and not mid_epoch:
                acc.wait_for_everyone()                # the main process wrote checkpoints/best
                acc.print(init_phase.switch(acc.unwrap_model(run.model), run.optimizer, run.ema, run.out,
                                            run.init.target))
            run.objective = (init_phase.ce_objective if run.init.active(epoch)
                             else run.init.objective(cfg, run.method_objective, acc.device))
        row = {"epoch": epoch, **train_epoch(run, epoch, resume if epoch == start_epoch else None),
               **evaluate(run, "val", epoch), **evaluate(run, "test", epoch)}
        row["samples_skipped"] = int(acc.reduce(torch.tensor(run.n_skipped, device=acc.device), "sum"))
        row["wall_s"] = time.perf_counter() - t_start
        row["lr"] = run.optimizer.param_groups[0]["lr"]
        transition = row.pop("val_transition", None)  # K x K: for the switch (below), not for the log
        through = row.pop("val_acc_through_transition", None)
        # ---- select on the (noisy) validation split: the paper's protocol ----
        # Without a validation split: accuracy on the given train labels, the same quantity
        # for every method (the objective's value is not: LIMIT's surrogate is no loss). Unlike
        # noisy validation accuracy it rewards memorizing the noise: keep a validation split.
        score = selection_score(run, epoch, row)
        improved = score > run.best["score"]
        if improved:
            run.best = {"score": score, "val_acc": row.get("val_acc"), "epoch": epoch, "test_acc": row.get("test_acc"),
                        "val_acc_clean_est": row.get("val_acc_clean_est"),
                        "val_acc_clean_est_se": row.get("val_acc_clean_est_se")}
            if transition is not None:                    # only while the switch may still need it
                run.best["val_transition"], run.best["switch_score"] = transition, through
        if run.init and run.init.decide(epoch, run.best.get("epoch"), run.best.get("val_acc"),
                                        run.best.get("val_transition")):
            if run.init.transition is not None:        # the CE phase's best, scored as LIMIT's epochs will be
                run.best["score"] = switch_score(run.best)
            acc.print(f"+init: the CE phase ends after epoch {epoch} (best noisy validation at epoch "
                      f"{run.best.get('epoch')}); {cfg.method} from epoch {run.init.end}"
                      + run.init.choices_note(cfg, run.best.get("val_transition")))
        # ---- log, then save: a kill in between only repeats this epoch's log line ----
        if acc.is_main_process:
            with safe_io.open_append(run.out / "metrics.jsonl") as f:   # never through a planted link
                f.write(json.dumps(row) + "\n")
            write_skips(run, epoch)
            acc.print(_line(row))
        meta = {"epoch": epoch, "in_epoch": False, "metrics": row}
        run.save("last", meta)
        if improved:
            run.save("best", meta)
        acc.log(row, step=epoch)
        since = max(run.best.get("epoch", epoch), (run.init.end or 0) - 1 if run.init else -1)
        if cfg.patience and epoch - since >= cfg.patience and not (run.init and run.init.active(epoch + 1)):
            acc.print(f"early stop: no validation gain in {cfg.patience} epochs")
            early = True
            break
    return {"best_val_acc": run.best.get("val_acc"), "best_epoch": run.best.get("epoch"),
            "best_val_acc_clean_est": run.best.get("val_acc_clean_est"),
            "best_val_acc_clean_est_se": run.best.get("val_acc_clean_est_se"),
            "predictor_loss_chosen": run.init.loss if run.init else None,
            "beta_after_init": run.init.beta(cfg) if run.init and run.init.loss else None,
            "predictor_transition_used": run.init.transition is not None if run.init else None,
            "test_acc": run.best.get("test_acc"), "test_acc_last": row.get("test_acc"),
            "train_acc_last": row.get("train_acc"),
            "epochs": row.get("epoch", -1) + 1, "early_stopped": early, "samples_skipped": row.get("samples_skipped", run.n_skipped),
            "wall_s": time.perf_counter() - t_start}


# ---- --max-skip-frac: a quietly shrinking dataset is an error ----
class SkipLimitError(DataError):
    """Too many samples of a split lost in one epoch: one line on stderr, exit code 2."""


def check_skips(run: Run, split: str, epoch: int, seen: int, first: int) -> None:
    """Stop the run when more than --max-skip-frac of a split's samples were lost this epoch.
    Lost = the card's count for the split's shards (the subset's, under --max-train-samples)
    minus the samples read by all ranks: damaged samples, the tail of a cut-off tar and a
    vanished shard alike, even a loss no record names. Every rank calls it at the same point
    with the same reduced `seen`, so all stop together (gather_object is a collective).
    The records so far this epoch are written to skipped.jsonl before stopping."""
    loader = run.loaders[split]
    expected = loader.expected(epoch)
    lost = expected - int(seen)
    if expected <= 0 or lost <= run.cfg.max_skip_frac * expected:
        return
    mine = run.skipped[first:]
    records = [r for part in gather_object([mine]) for r in part]      # all ranks' records
    per: dict[str, list] = {}                  # shard -> [samples skipped, shard-level reason]
    for shard, key, reason, _ in records:
        if shard:
            entry = per.setdefault(shard, [0, ""])
            entry[0] += bool(key)
            entry[1] = entry[1] if key else reason.split(":")[0]
    worst = sorted(per.items(), key=lambda kv: (not kv[1][1], -kv[1][0], kv[0]))[:3]
    names = ", ".join(f"{Path(s).name} ({why or f'{n} samples skipped'})" for s, (n, why) in worst)
    if run.accelerator.is_main_process:
        run.skipped[first:] = records
        write_skips(run, epoch)
    raise SkipLimitError(f"{split} epoch {epoch}: {lost} of {expected} samples lost "
                         f"({lost / expected:.1%} > --max-skip-frac {run.cfg.max_skip_frac}); worst shards: "
                         f"{names or 'none named'}; records in {run.out / 'skipped.jsonl'}")
# ---- end --max-skip-frac ----


def write_skips(run: Run, epoch: int) -> None:
    with safe_io.open_append(run.out / "skipped.jsonl") as f:
        for shard, key, reason, e in run.skipped:
            f.write(json.dumps({"shard": shard, "key": key, "reason": reason, "epoch": e}) + "\n")
    run.skipped.clear()


def _line(row: dict) -> str:
    f = lambda k: f"{row[k]:.4f}" if row.get(k) is not None else "-"  # noqa: E731
    se = (f" +-{row['val_acc_clean_est_se']:.3f}"
          if row.get("val_acc_clean_est") is not None and row.get("val_acc_clean_est_se") is not None else "")
    return (f"epoch {row['epoch']}: loss {f('train_loss')} train_acc {f('train_acc')} "
            f"flipped {f('train_acc_flipped')} val {f('val_acc')} (clean est {f('val_acc_clean_est')}{se}) test {f('test_acc')} "
            f"{row['images_per_s']:.0f} img/s wait {row['data_wait_frac']:.2f}")
