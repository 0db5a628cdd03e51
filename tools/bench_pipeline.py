"""Decode + augment throughput of the loaders side by side, and (--gpu) training steps fed by them.

    python tools/bench_pipeline.py [--count 2000] [--repeats 3] [--pass-repeat 1] [--workers W] [--batch-size 64]
    python tools/bench_pipeline.py --stages [--count 1000] [--repeats 3]   # time per image, stage by stage
    python tools/bench_pipeline.py --data 'shards/clothing1m-{000..099}.tar' --backend cpu|dali \\
        --workers W --batch-size B --image-size S --json
    python tools/bench_pipeline.py --gpu                   # one GPU machine: < 5 min on an H100, 16 cores
    python tools/bench_pipeline.py --gpu --device cpu --count 64 --steps 2 --model resnet18 --image-size 64

Default mode: one generated set (tools/synth_images.py, cached under --work) read by
  a          torchvision ImageFolder + PIL RandomResizedCrop + flip + ToTensor in a DataLoader (the JPEG files)
  b          the project's CPU backend over shards of the same files at original size
  b_r256     the same over shards made with --resize 256 (same card recipe: random_resized + flip)
  c_dali     the DALI backend (GPU "mixed" decoding when CUDA is present, else CPU)
all with the same workers (DALI: threads) and batch size, one warm-up pass each, then --repeats
interleaved rounds (a, b, b_r256, c, a, ...), so load drift hits all alike. A pass is one epoch
of --count x --pass-repeat samples: with --pass-repeat R > 1 the set is --count images each
present R times (hard links named r{k}-..., so R distinct samples, converted to shards like any
others; R copies of one shard in a URL list would not do: the readers skip a sample index met
twice in a pass). Both sides are measured warm: a keeps its DataLoader workers across passes
(persistent_workers), the shard sources start theirs once per pass (one trainer epoch each), so
each pass's start-up (the time to its first batch: worker start-up plus that batch's own work,
an upper bound) is printed as a share of the pass: raise --pass-repeat until it is under 5%
(a line says so when it is not). img/s: median, min-max, ratio to a.
--stages instead times each stage of a, b and b_r256 per image in this process over the --count
images (tools/bench_stages.py): where the time goes, and the rate 2 workers could reach at most.
--gpu (count 4000, workers = all cores, batch 256, pass-repeat 2) adds ResNet-50 training steps
(bf16 autocast, channels_last, SGD, 14 classes, --method ce) fed by each loader for --steps steps,
with data_wait_frac = host time blocked on the next batch / total (an upper bound on the GPU's idle
time for data: no sync inside the step), and the model alone on synthetic on-device batches.
The loaders run epoch after epoch under the steps; a CPU loader starts its workers at each
epoch, as the trainer does (the preset's 8,000-sample epoch is 31 steps of 256)."""
import argparse
import contextlib
import itertools
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torchvision  # noqa: E402

from pipeline import dali, loader  # noqa: E402
from pipeline.augment import AugSpec  # noqa: E402
from pipeline.backends import synthetic_batch  # noqa: E402
from pipeline.cpu import ReadSpec  # noqa: E402
from tools import bench_stages  # noqa: E402
from tools.bench_shards import make_images, shard  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CORES = len(os.sched_getaffinity(0))


def versions() -> dict:
    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), platform.processor())
    v = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
         "dali": None, "cores": CORES, "cpu": cpu, "load_avg": [round(x, 2) for x in os.getloadavg()]}
    if dali.dali_available():
        v["dali"] = __import__("nvidia.dali").dali.__version__
    with contextlib.suppress(OSError):     # DataLoader workers hand batches over in /dev/shm
        v["shm_gib"] = round(shutil.disk_usage("/dev/shm").total / 2**30, 1)
    if torch.cuda.is_available():
        v["gpu"], v["cuda"] = torch.cuda.get_device_name(), torch.version.cuda
    if shutil.which("nvidia-smi"):
        q = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            v["nvidia_smi"] = subprocess.run(q, capture_output=True, text=True, timeout=30).stdout.strip()
    return v


def make_set(work: Path, count: int, workers: int, repeat: int = 1) -> tuple[Path, dict]:
    """-> (image tree, {"orig": shard dir, "r256": shard dir}) of count x repeat samples (each
    image `repeat` times, see copies): at least 8 shards, 4 per worker, cached."""
    tree = copies(make_images(work, count, workers), repeat)
    n_shards = max(8, 4 * workers)
    total = count * repeat
    size = math.ceil(total / n_shards)
    name = f"shards-{total}-{size}" if repeat == 1 else f"shards-{count}x{repeat}-{size}"
    dirs = {"orig": work / name / "orig", "r256": work / name / "r256"}
    for kind, out in dirs.items():
        if not (out / "bench.json").exists():
            shard(tree, out, 256 if kind == "r256" else 0, size, workers)
    return tree, dirs


def copies(tree: Path, repeat: int) -> Path:
    """An ImageFolder tree holding every image of `tree` `repeat` times, as hard links (copies
    where the file system has none) named r{k}-NAME: the same bytes, distinct samples. Cached."""
    if repeat == 1:
        return tree
    out = tree.with_name(f"{tree.name}x{repeat}")
    if (out / ".done").exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    for f in sorted(tree.glob("*/*.jpg")):
        (out / f.parent.name).mkdir(parents=True, exist_ok=True)
        for k in range(repeat):
            link = out / f.parent.name / f"r{k}-{f.name}"
            try:
                os.link(f, link)
            except OSError:
                shutil.copyfile(f, link)
    (out / ".done").touch()
    return out


def baseline_source(tree: Path, args):
    t = torchvision.transforms
    tf = t.Compose([t.RandomResizedCrop(args.image_size), t.RandomHorizontalFlip(), t.ToTensor()])
    ds = torchvision.datasets.ImageFolder(str(tree), tf)

    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    # built once, its workers kept between passes: the warm-up pass pays their start-up, timed passes do not
    dl = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                     pin_memory=torch.cuda.is_available(), persistent_workers=args.workers > 0)

    def epoch(e: int):
        yield from dl
    return epoch


def shard_source(data: str, backend: str, args):
    """A pass is one trainer epoch (pipeline.loader.Loader) over the shards."""
    ds = loader.resolve([str(data)])
    aug = loader.spec_from_card(ds.card, args.image_size)
    ld = loader.build_loaders(ds, aug, batch_size=args.batch_size, workers=args.workers, seed=0,
                              noise=loader.noise_table(ds, "none", "", 0), keep=None, backend=backend)["train"]

    def epoch(e: int):
        for b in ld(e):
            yield b.images, b.labels
    return epoch


def sources(tree: Path, dirs: dict, args) -> dict:
    out = {"a": baseline_source(tree, args), "b": shard_source(dirs["orig"], "cpu", args),
           "b_r256": shard_source(dirs["r256"], "cpu", args)}
    if dali.dali_available():
        out["c_dali"] = shard_source(dirs["orig"], "dali", args)
    return out


def sync() -> None:
    torch.cuda.synchronize() if torch.cuda.is_available() else None   # DALI "mixed" gives GPU tensors


def one_pass(source, epoch: int) -> tuple[float, float]:
    """-> (img/s, the share of the pass spent before its first batch: worker start-up plus one
    batch's work, an upper bound on the start-up)."""
    start, n, first = time.perf_counter(), 0, None
    for _, labels in source(epoch):
        first = time.perf_counter() if first is None else first
        n += len(labels)
    sync()
    total = time.perf_counter() - start
    return n / total, ((first or start) - start) / total


def measure(srcs: dict, repeats: int, log) -> dict:
    """Round 0 warms every source up; rounds 1..repeats are timed, interleaved. A source that
    fails keeps its error message instead and is dropped (the others' numbers still count)."""
    rates = {name: [] for name in srcs}
    for r in range(repeats + 1):
        for name, src in (kv for kv in srcs.items() if isinstance(rates[kv[0]], list)):
            try:
                rate, startup = one_pass(src, r)
            except Exception as e:  # noqa: BLE001  (reported, not hidden)
                rates[name] = failed(name, e, log)
                continue
            log(f"  round {r}{' (warm-up)' if r == 0 else ''} {name:<7} {rate:8.1f} img/s  "
                f"start-up {100 * startup:4.1f}% of the pass")
            if r:
                rates[name].append((rate, startup))
    return rates


def failed(name: str, e: Exception, log) -> str:
    msg = f"{type(e).__name__}: {e}"[:400]
    log(f"  {name} FAILED: {msg}")
    return msg


def summary(runs: list[tuple[float, float]] | str, base: float | None = None) -> dict:
    if isinstance(runs, str):
        return {"error": runs}
    rates = [r for r, _ in runs]
    med = statistics.median(rates)
    out = {"images_per_s": round(med, 1), "min": round(min(rates), 1), "max": round(max(rates), 1),
           "spread_pct": round(100 * (max(rates) - min(rates)) / med, 1), "runs": [round(x, 1) for x in rates],
           "startup_pct": round(100 * statistics.median(s for _, s in runs), 1)}
    return {**out, "ratio_to_a": round(med / base, 2)} if base else out


def make_step(args, device):
    """The trainer's own step (train.step.train_step) on (x, y) batches, bf16 autocast."""
    from accelerate import Accelerator

    from pipeline.batch import Batch
    from tools.bench_step import make_run
    from train.metrics import Meter
    from train.step import train_step
    acc = Accelerator(cpu=device.type == "cpu", mixed_precision="bf16")
    run, meter = make_run(acc, args.model, args.method), Meter(acc.device)

    def step(x, y):
        train_step(run, Batch(x, y, torch.full_like(y, -1), torch.arange(len(y), device=y.device)), meter)
    return step


def device_batches(source, device):
    """Endless (x, y) on the device, normalized like pipeline.batch.to_device (uint8 or [0, 1] floats)."""
    mean = torch.tensor(MEAN, device=device).view(1, -1, 1, 1)
    std = torch.tensor(STD, device=device).view(1, -1, 1, 1)
    for e in itertools.count():
        for x, y in source(e):
            scale = 255.0 if x.dtype == torch.uint8 else 1.0
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield (x.float() - mean * scale) / (std * scale), y.to(device, non_blocking=True)


def timed_steps(step, batches, warmup: int, steps: int, device) -> dict:
    for _ in range(warmup):
        step(*next(batches))
    sync()
    wait, n, start = 0.0, 0, time.perf_counter()
    for _ in range(steps):
        t = time.perf_counter()
        x, y = next(batches)
        wait += time.perf_counter() - t
        n += len(y)
        step(x, y)
    sync()
    total = time.perf_counter() - start
    getattr(batches, "close", lambda: None)()     # shuts the loader's workers down
    return {"images_per_s": round(n / total, 1), "step_ms": round(1000 * total / steps, 2),
            "data_wait_frac": round(wait / total, 4)}


def bench_steps(tree, dirs, args, device, log) -> dict:
    step = make_step(args, device)
    spec = ReadSpec(AugSpec(size=args.image_size), train=True, batch_size=args.batch_size)
    b = synthetic_batch(spec, 14, device, MEAN, STD)              # the synthetic backend: no data read
    out = {"model_alone": timed_steps(step, itertools.repeat((b.images, b.labels)), args.warmup_steps, args.steps,
                                      device)}
    log(f"  model alone        {out['model_alone']['images_per_s']:8.1f} img/s")
    for name, src in sources(tree, dirs, args).items():
        try:
            r = timed_steps(step, device_batches(src, device), args.warmup_steps, args.steps, device)
        except Exception as e:  # noqa: BLE001  (reported, not hidden)
            out[name] = {"error": failed(name, e, log)}
            continue
        r["ratio_to_model_alone"] = round(r["images_per_s"] / out["model_alone"]["images_per_s"], 3)
        out[name] = r
        log(f"  fed by {name:<11} {r['images_per_s']:8.1f} img/s  data wait {100 * r['data_wait_frac']:5.1f}%")
    return out


def generic(args) -> dict:
    rates = measure({args.backend: shard_source(args.data, args.backend, args)}, args.repeats,
                    lambda s: None if args.json else print(s))
    return {"data": args.data, "backend": args.backend, "workers": args.workers, "batch_size": args.batch_size,
            "image_size": args.image_size, "repeats": args.repeats, **summary(rates[args.backend])}


def compare(args, log) -> dict:
    start = time.perf_counter()
    tree, dirs = make_set(args.work, args.count, args.workers, args.pass_repeat)
    log(f"set: {args.count} JPEGs x {args.pass_repeat} in {tree}, shards in {dirs['orig'].parent} "
        f"({time.perf_counter() - start:.0f} s)")
    if args.stages:
        return {"stages": bench_stages.profile(tree, dirs, args, log)}
    rates = measure(sources(tree, dirs, args), args.repeats, log)
    base = statistics.median(r for r, _ in rates["a"]) if isinstance(rates["a"], list) else None
    res = {"pipeline": {k: summary(v, base) for k, v in rates.items()},
           "dali_decode": "gpu" if dali.gpu_decode_available() else "cpu"}
    if args.gpu:
        torch.backends.cudnn.benchmark = True
        res["steps"] = bench_steps(tree, dirs, args, torch.device(args.device), log)
    return res


def print_table(res: dict, args) -> None:
    if "stages" in res:
        bench_stages.print_table(res["stages"], args)
        return
    print(f"\n{args.count} images x {args.pass_repeat} a pass, {args.workers} workers, batch {args.batch_size}, "
          f"{args.image_size}px, median of {args.repeats} (DALI decodes on {res['dali_decode']})")
    for name, r in res["pipeline"].items():
        print(f"  {name:<7} FAILED {r['error']}" if "error" in r else
              f"  {name:<7} {r['images_per_s']:8.1f} img/s  ({r['min']:.1f}-{r['max']:.1f}, "
              f"spread {r['spread_pct']:.1f}%, start-up {r['startup_pct']:.1f}% of a pass)  "
              f"x{r.get('ratio_to_a', math.nan):.2f} of a")
    cold = [n for n, r in res["pipeline"].items() if r.get("startup_pct", 0) >= 5]
    if cold:
        print(f"  start-up is 5% or more of a pass for {', '.join(cold)}: not the steady state, "
              f"raise --pass-repeat")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="shards (pattern, list or card folder): measure just these")
    p.add_argument("--backend", default="cpu", choices=["cpu", "dali"], help="with --data")
    p.add_argument("--count", type=int, help="generated images (default 2000; --gpu 4000)")
    p.add_argument("--workers", type=int, help="loader workers / DALI threads (default: all cores)")
    p.add_argument("--batch-size", type=int, help="default 64; --gpu 256")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pass-repeat", type=int, help="each image is in the set this many times (default 1; --gpu 2)")
    p.add_argument("--stages", action="store_true", help="time per image stage by stage in one process "
                   "over the --count images (tools/bench_stages.py), instead of the passes")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "limit-bench", help="cache folder")
    p.add_argument("--gpu", action="store_true", help="GPU preset, adds training steps")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="for --gpu steps")
    p.add_argument("--model", default="resnet50", help="--gpu steps: the timm model")
    p.add_argument("--method", default="ce", choices=["ce", "limit", "limit-head"], help="--gpu steps")
    p.add_argument("--steps", type=int, default=60, help="--gpu: timed steps per loader")
    p.add_argument("--warmup-steps", type=int, help="default min(10, --steps)")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    preset = dict(count=4000, workers=CORES, batch_size=256, pass_repeat=2) if args.gpu else \
        dict(count=2000, workers=CORES, batch_size=64, pass_repeat=1)
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.warmup_steps = min(10, args.steps) if args.warmup_steps is None else args.warmup_steps
    if args.stages:
        args.pass_repeat = 1                # the profile reads the images once a pass
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    env = versions()
    if args.data:
        print(json.dumps({**generic(args), "env": env}))
        return 0
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    res = compare(args, print)
    print_table(res, args)
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {env['load_avg']}, after {load_after}")
    if args.json:
        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        print(json.dumps({"env": env, "load_avg_after": load_after, "config": cfg, **res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
