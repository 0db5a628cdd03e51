"""make_shards throughput with 1 and 2 worker processes on the same generated images, at
original size and with --resize 256: img/s (median and min-max of --repeats interleaved runs)
and the ratio of each worker count to 1 worker.

    python tools/bench_shards.py [--count 1000] [--repeats 3] [--workers 1,2] [--shards 16] [--json]

The images (tools/synth_images.py, Clothing1M-like ~500x500 JPEGs) are generated once and cached
under --work; they are read once before timing, so every run finds them in the page cache. Each run
is `tools/make_shards.py imagefolder IMAGES --out FRESH --shard-size ceil(count/shards) --workers K
[--resize 256]` in this process (its process pool start-up counted), its output deleted after."""
import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import PIL

from tools import make_shards, synth_images


def _write_chunk(job) -> None:
    tree, k, n = job
    part = synth_images.write_tree(tree / f".part{k}", n, seed=k)
    for f in sorted(part.glob("*/*.jpg")):
        (tree / f.parent.name).mkdir(parents=True, exist_ok=True)
        f.rename(tree / f.parent.name / f"{k:02d}{f.name}")
    shutil.rmtree(part)


def make_images(work: Path, count: int, jobs: int) -> Path:
    """An ImageFolder tree of `count` Clothing1M-like JPEGs (14 classes), written by `jobs`
    processes (chunk k seeded with k); cached as WORK/images-COUNT."""
    tree = work / f"images-{count}"
    if (tree / ".done").exists():
        return tree
    shutil.rmtree(tree, ignore_errors=True)
    sizes = [count // jobs + (k < count % jobs) for k in range(jobs)]
    with ProcessPoolExecutor(jobs) as pool:
        list(pool.map(_write_chunk, [(tree, k, n) for k, n in enumerate(sizes) if n]))
    (tree / ".done").touch()
    return tree


def shard(tree: Path, out: Path, resize: int, shard_size: int, workers: int) -> float:
    """make_shards imagefolder TREE --out OUT --name bench (quiet); -> seconds taken."""
    argv = ["imagefolder", str(tree), "--out", str(out), "--name", "bench", "--shard-size", str(shard_size),
            "--workers", str(workers)] + (["--resize", str(resize)] if resize else [])
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        if make_shards.main(argv):
            raise SystemExit(f"make_shards failed: {' '.join(argv)}")
    return time.perf_counter() - start


def one_run(tree: Path, work: Path, count: int, resize: int, shard_size: int, workers: int) -> float:
    out = Path(tempfile.mkdtemp(prefix="shards-", dir=work))
    try:
        return count / shard(tree, out, resize, shard_size, workers)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure(tree: Path, args) -> dict:
    """{(resize, workers): [img/s per run]}, runs interleaved over the configurations."""
    size = math.ceil(args.count / args.shards)
    rates = {(r, w): [] for r in (0, 256) for w in args.workers}
    for i in range(args.repeats):
        for (resize, workers), got in rates.items():
            got.append(one_run(tree, args.work, args.count, resize, size, workers))
            print(f"  run {i} resize {resize or 'orig':<4} workers {workers}  {got[-1]:8.1f} img/s", flush=True)
    return rates


def summarize(rates: dict) -> dict:
    out = {}
    for (resize, workers), got in rates.items():
        med = statistics.median(got)
        one = statistics.median(rates[(resize, 1)]) if (resize, 1) in rates else med
        out[f"{'r256' if resize else 'orig'}_w{workers}"] = {
            "resize": resize, "workers": workers, "images_per_s": round(med, 1), "min": round(min(got), 1),
            "max": round(max(got), 1), "runs": [round(x, 1) for x in got], "ratio_to_1_worker": round(med / one, 2)}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    p.add_argument("--shards", type=int, default=16, help="train shards to write (work items of the pool)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "limit-bench", help="cache folder")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    cores = len(os.sched_getaffinity(0))
    env = {"python": platform.python_version(), "pillow": PIL.__version__, "cores": cores,
           "load_avg": [round(x, 2) for x in os.getloadavg()]}
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    args.work.mkdir(parents=True, exist_ok=True)
    tree = make_images(args.work, args.count, max(args.workers + [cores]))
    for f in tree.rglob("*.jpg"):       # page cache: every run reads the same warm files
        f.read_bytes()
    res = summarize(measure(tree, args))
    print(f"\nmake_shards, {args.count} images in {args.shards} shards, median of {args.repeats}")
    for name, r in res.items():
        print(f"  {name:<8} {r['images_per_s']:8.1f} img/s  ({r['min']:.1f}-{r['max']:.1f})  "
              f"x{r['ratio_to_1_worker']:.2f} of 1 worker")
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average before {env['load_avg']}, after {load_after}")
    if args.json:
        print(json.dumps({"env": env, "load_avg_after": load_after, "count": args.count,
                          "shards": args.shards, "results": res}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
