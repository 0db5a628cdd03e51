"""Median training-step time per method on synthetic on-device batches (forward + backward +
optimizer step, after warm-up), and the ratio to cross-entropy.

    python tools/bench_step.py --model resnet50 --image-size 224 --batch-size 8 \
        --methods ce,limit,limit-head [--steps 10] [--precision bf16] [--json]

With --json the last line is one JSON object: {"ce": {"step_s": .., "ratio": 1.0, "images_per_s": ..}, ...}.
Time on CUDA is taken with events around each step (no host sync inside the step)."""
import argparse
import json
import os
import statistics
import time
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from train.objectives import make_objective  # noqa: E402
from train.setup import build_model, build_optimizer  # noqa: E402

METHODS = {"ce": dict(method="ce"), "limit": dict(method="limit", predictor="network"),
           "limit-head": dict(method="limit", predictor="head")}


def config(model: str, **kw) -> SimpleNamespace:
    base = dict(model=model, pretrained="", predictor_model="", predictor_loss="mae", beta=10.0,
                sample=False, sample_dist="gaussian", sigma=0.1, gce_q=0.7, optimizer="sgd",
                lr=0.01, momentum=0.9, weight_decay=0.0)
    return SimpleNamespace(**{**base, **kw})


def time_method(name, args, device, dtype) -> list[float]:
    cfg = config(args.model, **METHODS[name])
    model = build_model(cfg, args.classes, 3).to(device).to(memory_format=torch.channels_last)
    opt, objective = build_optimizer(cfg, model), make_objective(cfg)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch_size,), device=device)
    times = []
    for i in range(args.warmup + args.steps):
        start = time.perf_counter()
        if device.type == "cuda":
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
            ev[0].record()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = objective(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
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
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    import models.backbones  # noqa: F401  (registers mnist_cnn, cifar_resnet34)
    result = {}
    for name in args.methods.split(","):
        times = time_method(name, args, device, dtype)
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
