"""The training step, defined once. The loop (train/loop.py) and the benchmarks
(tools/bench_step.py, tools/bench_pipeline.py) call it, so what is timed is what trains:
the learning-rate schedule, autocast, the fused forward, the objective, Accelerate's backward,
clipping, the optimizer, the EMA and the device-side meter (docs/architecture.md section 2)."""
from pipeline.batch import Batch
from train.setup import lr_at


def train_step(run, b: Batch, meter=None) -> dict:
    """One optimizer step on a device batch `b` (pipeline.batch.to_device's output) for `run`
    (train.loop.Run). A pad batch (DDP ranks kept in step) takes part in the all-reduce with
    zero loss weight and is left out of the meter. Returns the objective's value and its own
    statistics as detached device tensors: nothing here syncs with the host."""
    cfg, acc = run.cfg, run.accelerator
    lr = lr_at(run.step, run.total_steps, run.warmup_steps, cfg.lr, cfg.sched, run.switch_step)  # a pure function of the step
    held = run.step < run.predictor_warmup_steps      # --predictor-warmup: the predictor learns alone
    for g in run.optimizer.param_groups:
        g["lr"] = 0.0 if held and g.get("name") == "classifier" else lr
    with acc.autocast():
        out = run.model(b.images)
        loss, stats = run.objective(out, b.labels)
    acc.backward(loss * 0 if b.pad else loss)
    if cfg.clip_grad:
        acc.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    if run.ema is not None:
        run.ema.update()
    stats = {"objective": loss.detach(), **stats}
    if meter is not None and not b.pad:
        meter.update(out.logits, b.labels, b.clean, stats)
    run.step += 1
    return stats

