"""Median training-step time per method on synthetic on-device batches: the trainer's own
step (train.step.train_step: autocast, forward, objective, Accelerate's backward, optimizer,
meter), after warm-up, and the ratio to cross-entropy.

    python tools/bench_step.py --model resnet50 --image-size 224 --batch-size 8 \
        --methods ce,limit,limit-head [--steps 10] [--precision bf16] [--json]

With --json the last line is one JSON object: {"ce": {"step_s": .., "ratio": 1.0, "images_per_s": ..}, ...}.
Time on CUDA is taken with events around each step (no host sync inside the step)."""
import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from pipeline.augment import AugSpec  # noqa: E402
from pipeline.backends import synthetic_batch  # noqa: E402
from pipeline.cpu import ReadSpec  # noqa: E402
from train.config import Config  # noqa: E402
from train.loop import Run  # noqa: E402
from train.metrics import Meter  # noqa: E402
from train.objectives import make_objective  # noqa: E402
from train.setup import build_model, build_optimizer  # noqa: E402
from train.step import train_step  # noqa: E402

METHODS = {"ce": dict(method="ce"), "limit": dict(method="limit", predictor="network"),
           "limit-head": dict(method="limit", predictor="head")}


def make_run(accelerator, model: str, method: str, classes: int = 14, channels: int = 3) -> Run:
    """A Run around the trainer's own model, optimizer and objective (train/setup.py), SGD at
    the ResNet-50 recipe's settings, for timing train.step.train_step as the loop calls it."""
    cfg = Config(data=["synthetic"], model=model, optimizer="sgd", lr=0.01, momentum=0.9, **METHODS[method])
    net = build_model(cfg, classes, channels).to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, net)
    net, opt = accelerator.prepare(net, opt)
    return Run(cfg, accelerator, net, opt, make_objective(cfg), loaders={}, norm=((0.5,), (0.5,)),
               steps_per_epoch=1, out=Path(tempfile.gettempdir()))


def time_method(name, args, accelerator) -> list[float]:
    run = make_run(accelerator, args.model, name, args.classes)
    device = accelerator.device
    spec = ReadSpec(AugSpec(size=args.image_size), train=True, batch_size=args.batch_size)
    batch = synthetic_batch(spec, args.classes, device, (0.5,) * 3, (0.5,) * 3)   # the model's cost alone
    meter, times = Meter(device), []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        if device.type == "cuda":
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
        train_step(run, batch, meter)
        if device.type == "cuda":
            ev[1].record()
            ev[1].synchronize()
            elapsed = ev[0].elapsed_time(ev[1]) / 1000
        else:
            elapsed = time.perf_counter() - start
        if i >= args.warmup:
            times.append(elapsed)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--methods", default="ce,limit,limit-head")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    from accelerate import Accelerator
    acc = Accelerator(cpu=args.device == "cpu", mixed_precision={"fp32": "no"}.get(args.precision, args.precision))
    device = acc.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    import models.backbones  # noqa: F401  (registers mnist_cnn, cifar_resnet34)
    result = {}
    for name in args.methods.split(","):
        times = time_method(name, args, acc)
        med = statistics.median(times)
        result[name] = {"step_s": round(med, 5), "spread_s": round(max(times) - min(times), 5),
                        "images_per_s": round(args.batch_size / med, 1)}
    base = result.get("ce", next(iter(result.values())))["step_s"]
    for r in result.values():
        r["ratio"] = round(r["step_s"] / base, 3)
    if not args.json:
        print(f"{args.model} {args.image_size}px batch {args.batch_size} {args.precision} on {device}")
        for name, r in result.items():
            print(f"  {name:<11} {r['step_s']*1000:8.1f} ms/step  {r['images_per_s']:8.1f} img/s  x{r['ratio']:.2f} of CE")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
