"""Cost curves of every stage against the dataset size , on a synthetic Clothing1M.

    python tools/bench_scale.py --n 10000,100000,1000000 [--work DIR] [--json OUT]
        [--train-cap M] [--model resnet18] [--image-size 64] [--keep]

For each N: tools/synth_clothing.py (2 workers), tools/make_shards.py clothing1m (2 workers),
tools/verify_shards.py, one training epoch (CPU backend, --model at --image-size px, at most
--train-cap samples: an epoch over 10^6 at 64 px on 2 cores takes hours), and
tools/rank_labels.py over the run's train split. Each stage is a subprocess measured by
`/usr/bin/time -v` (wall time; "Maximum resident set size" is the largest single process of the
tree) and by a wrapper that reads its own /proc/self/io after reaping the stage: a parent's
rchar/wchar include every reaped descendant's (docs/architecture.md section 5), so the delta is what the
whole tree read and wrote (page-cache hits count, unlike read_bytes). The wrapper also samples
the tree's RSS each second to split the peak into the main process and its largest worker.

The JSON holds one row per (stage, N) and, per stage, the exponent k of wall_s ~ items^k from a
least-squares line on log-log axes (items: what the stage processed, N-proportional except a
capped train stage, whose items are the cap)."""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TIME = "/usr/bin/time"


# -- fitting ------------------------------------------------------------------------------

def fit_exponent(items: list[float], seconds: list[float]) -> float | None:
    """Slope of log(seconds) on log(items), least squares; None under two distinct sizes."""
    pts = [(math.log(n), math.log(t)) for n, t in zip(items, seconds) if n > 0 and t > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sxx


# -- the measuring wrapper (runs as `bench_scale.py --_measure OUT.json -- CMD...`) ---------

def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


def _children_of() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _sample_rss(root: int, peaks: dict, stop: threading.Event) -> None:
    """Peak RSS of the stage's main process and of its largest descendant, sampled each second."""
    while not stop.wait(1.0):
        kids, todo, tree = _children_of(), [root], []
        while todo:
            p = todo.pop()
            tree.append(p)
            todo.extend(kids.get(p, []))
        peaks["main"] = max(peaks["main"], _rss_mb(root))
        peaks["worker"] = max([peaks["worker"]] + [_rss_mb(p) for p in tree[1:]])


def measure(out: str, cmd: list[str]) -> int:
    before = _io()
    proc = subprocess.Popen(cmd)
    peaks, stop = {"main": 0.0, "worker": 0.0}, threading.Event()
    sampler = threading.Thread(target=_sample_rss, args=(proc.pid, peaks, stop), daemon=True)
    sampler.start()
    rc = proc.wait()
    stop.set()
    sampler.join()
    after = _io()
    Path(out).write_text(json.dumps({"rc": rc, "main_rss_mb": round(peaks["main"], 1),
                                     "worker_rss_mb": round(peaks["worker"], 1),
                                     **{k: after[k] - before[k] for k in ("rchar", "wchar", "read_bytes", "write_bytes")}}))
    return rc


# -- one stage ----------------------------------------------------------------------------

def parse_time_v(text: str) -> dict:
    """Wall seconds and max RSS (MB) from GNU time -v's report."""
    out = {}
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["peak_rss_mb"] = round(int(m.group(1)) / 1024, 1)
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        secs = 0.0
        for part in m.group(1).split(":"):
            secs = secs * 60 + float(part)
        out["time_wall_s"] = secs
    return out


def run_stage(name: str, cmd: list[str], log: Path) -> dict:
    io_file = log.with_suffix(".io.json")
    wrapped = [sys.executable, __file__, "--_measure", str(io_file), "--", *cmd]
    if Path(TIME).exists():
        wrapped = [TIME, "-v", *wrapped]
    print(f"[bench_scale] {name}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(wrapped, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                            env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))).returncode
    wall = time.perf_counter() - t0
    text = log.read_text(errors="replace")
    row = {"stage": name, "wall_s": round(wall, 2), "rc": rc, "command": " ".join(cmd), **parse_time_v(text)}
    if io_file.exists():
        row.update(json.loads(io_file.read_text()))
    if rc != 0:
        tail = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("\t")][-3:]
        print(f"[bench_scale] {name} failed (rc {rc}); log {log}: {' | '.join(tail)}", flush=True)
    return row


# -- the sweep ----------------------------------------------------------------------------

def card_counts(shards: Path) -> dict[str, int]:
    try:
        card = json.loads((shards / "c1m.json").read_text())
        return {k: v["count"] for k, v in card["splits"].items()}
    except (OSError, ValueError, KeyError):
        return {}


def capped(shards: Path, cap: int) -> int:
    """Train samples the epoch uses: the whole split, or the cap when the split is larger."""
    total = card_counts(shards).get("train", 0)
    return min(total, cap) if cap else total


def stages_for(n: int, work: Path, args) -> list[tuple[str, callable, callable]]:
    """(name, command(), items()) per stage; both are called after the stages before it ran
    (the train epoch needs the card's train count: limit.py refuses a cap above it)."""
    py, src, shards, run, rank = sys.executable, work / "src", work / "shards", work / "run", work / "rank"

    def train():
        cmd = [py, "train/limit.py", "--data", str(shards), "--model", args.model, "--image-size",
               str(args.image_size), "--epochs", "1", "--workers", "2", "--batch-size", str(args.batch_size),
               "--out", str(run), "--overwrite"]
        cap = capped(shards, args.train_cap)
        return cmd + (["--max-train-samples", str(cap)] if cap < card_counts(shards).get("train", 0) else [])
    return [
        ("synth_clothing", lambda: [py, "tools/synth_clothing.py", str(src), "--n", str(n), "--workers", "2"],
         lambda: n),
        ("make_shards", lambda: [py, "tools/make_shards.py", "clothing1m", str(src), "--out", str(shards),
                                 "--name", "c1m", "--workers", "2"],
         lambda: sum(card_counts(shards).values())),          # the listed images, not clean-train-only ones
        ("verify_shards", lambda: [py, "tools/verify_shards.py", str(shards), "--name", "c1m", "--workers", "2"],
         lambda: sum(card_counts(shards).values())),
        ("train_epoch", train, lambda: capped(shards, args.train_cap)),
        ("rank_labels", lambda: [py, "tools/rank_labels.py", "--run", str(run), "--out", str(rank), "--split", "train"],
         lambda: capped(shards, args.train_cap)),
    ]


def sweep_one(n: int, args) -> list[dict]:
    work = args.work / f"n{n}"
    if work.exists():
        shutil.rmtree(work)        # a clean start: synth_clothing would skip old images otherwise
    (work / "logs").mkdir(parents=True)
    rows = []
    for name, cmd, items in stages_for(n, work, args):
        row = run_stage(name, cmd(), work / "logs" / f"{name}.log")
        row.update(n=n, items=items())
        row["items_per_s"] = round(row["items"] / row["wall_s"], 1) if row["wall_s"] else None
        if name == "train_epoch":
            row["capped"] = row["items"] < card_counts(work / "shards").get("train", 0)
        rows.append(row)
        print(f"[bench_scale] N={n} {name}: {row['wall_s']} s, {row['items_per_s']} items/s, "
              f"peak RSS {row.get('peak_rss_mb')} MB", flush=True)
        if row["rc"] != 0:
            break                  # the later stages need this one's output
    if not args.keep:
        shutil.rmtree(work / "src", ignore_errors=True)
    return rows


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def exponents(rows: list[dict], x: str = "items") -> dict[str, float | None]:
    """Per stage, k of wall_s ~ x^k (x: "items" the stage processed, or the dataset size "n")."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        ok = [r for r in rows if r["stage"] == stage and r["rc"] == 0]
        k = fit_exponent([r[x] for r in ok], [r["wall_s"] for r in ok])
        out[stage] = round(k, 3) if k is not None else None
    return out


def marginal_cost(rows: list[dict]) -> dict[str, float | None]:
    """Per stage, seconds per extra item between the two largest sizes: the per-image cost with
    the fixed start-up (interpreter, torch import, pool start) taken out, for projections."""
    out = {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        ok = sorted((r for r in rows if r["stage"] == stage and r["rc"] == 0), key=lambda r: r["items"])
        a, b = (ok[-2], ok[-1]) if len(ok) >= 2 else (None, None)
        out[stage] = (round((b["wall_s"] - a["wall_s"]) / (b["items"] - a["items"]), 7)
                      if a and b["items"] > a["items"] else None)
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", default="10000,100000,1000000", help="comma-separated dataset sizes")
    p.add_argument("--work", type=Path, default=Path("data/bench_scale"), help="scratch folder (GBs at 10^6)")
    p.add_argument("--json", type=Path, default=None, help="write the table here (default: WORK/scale.json)")
    p.add_argument("--train-cap", type=int, default=20000,
                   help="--max-train-samples of the train epoch (0: the whole split)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--keep", action="store_true", help="keep the synthetic source images")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_measure"]:
        return measure(argv[1], argv[3:])
    args = parse_args(argv)
    sizes = [int(v) for v in args.n.split(",") if v]
    rows, loads = [], {"before": load_avg()}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for n in sizes:
        rows += sweep_one(n, args)
    loads["after"] = load_avg()
    result = {"started": started, "sizes": sizes, "cpus": os.cpu_count(), "load_avg": loads,
              "train_cap": args.train_cap, "model": args.model, "image_size": args.image_size,
              "rows": rows, "exponent_k": exponents(rows), "exponent_k_vs_n": exponents(rows, "n"),
              "marginal_s_per_item": marginal_cost(rows)}
    out = args.json or args.work / "scale.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"[bench_scale] load average before {loads['before']}, after {loads['after']}; wrote {out}")
    for r in rows:
        print(f"  {r['stage']:15s} N={r['n']:>8d} items={r['items']:>8d} {r['wall_s']:>8.1f} s "
              f"{r['items_per_s'] or 0:>8.1f}/s peak {r.get('peak_rss_mb', 0):>7.1f} MB "
              f"read {r.get('rchar', 0) / 2**20:>8.1f} MiB written {r.get('wchar', 0) / 2**20:>8.1f} MiB")
    print(f"  exponent k (wall ~ items^k): {result['exponent_k']}; against N: {result['exponent_k_vs_n']}")
    print(f"  marginal seconds per item: {result['marginal_s_per_item']}")
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
