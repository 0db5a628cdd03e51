"""How a training run streams: start-up, throughput and memory through an epoch (issue 16).

    python tools/bench_stream.py --json OUT.json [--stop-after-steps K] [--copy-at S RUN COPY] -- \\
        python train/limit.py --data shards/c1m ... --epochs 1

Runs the command, timestamps its progress bar (tqdm's "epoch E: ... n/T" on stderr) and samples
the resident memory of its process tree twice a second. Writes:
  - first_step_s: launch to the first optimizer step (the bar's first update);
  - per tenth of the first epoch: images/s inside it, the main process's and the largest
    worker's RSS at its end;
  - rchar/wchar of the whole tree (this process reaps it, so /proc/self/io counts it);
  - import_s: `python -c "import train.limit"` (Python, torch, timm, accelerate) timed alone
    just before, so that start-up minus imports is the trainer's own.
--stop-after-steps SIGKILLs the tree after K steps (start-up and resume measurements);
--copy-at S RUN COPY copies the run folder once step S+1 is reached (the --save-every
checkpoint at step S is then complete), lock left out, to resume from later.
Speed figures depend on what else runs: say so beside them (BENCHMARKS.md)."""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tools.bench_scale import _children_of, _io, _rss_mb

BAR = re.compile(r"epoch (\d+):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children_of(), [], [pid]
    while todo:
        p = todo.pop()
        out += kids.get(p, [])
        todo += kids.get(p, [])
    return out


def import_seconds() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import train.limit"], check=True)
    return round(time.perf_counter() - t, 2)


class Watch:
    """The child's bar updates [(t, epoch, n, total)] and RSS samples [(t, n, main MB, worker MB)]."""

    def __init__(self, proc: subprocess.Popen, t0: float):
        self.proc, self.t0, self.bar, self.rss, self.n = proc, t0, [], [], 0
        self.done = threading.Event()

    def read_bar(self, log) -> None:
        buf = b""
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            log.write(chunk)
            buf += chunk
            *parts, buf = re.split(rb"[\r\n]", buf)
            for part in parts:
                m = BAR.search(part.decode("utf-8", "replace"))
                if m:
                    e, n, total = map(int, m.groups())
                    if not self.bar or e == self.bar[0][1]:
                        self.n = n
                    self.bar.append((time.perf_counter() - self.t0, e, n, total))

    def sample_rss(self) -> None:
        while not self.done.wait(0.5):
            workers = [_rss_mb(p) for p in descendants(self.proc.pid)]
            self.rss.append((time.perf_counter() - self.t0, self.n, _rss_mb(self.proc.pid), max(workers, default=0.0)))


def tenths(bar: list, rss: list, batch: int) -> list[dict]:
    """Images/s and RSS per tenth of the first epoch seen."""
    first = [(t, n, total) for t, e, n, total in bar if e == bar[0][1]]
    total = first[-1][2]
    out, prev_t, prev_n = [], None, None
    last = first[-1][1]            # tqdm's last print may fall a few steps short of the total
    for k in range(1, 11):
        mark = [(t, n) for t, n, _ in first if n >= min(total * k / 10, last)]
        if not mark:
            break
        t, n = mark[0]
        if prev_t is None:
            start = [(tt, nn) for tt, nn, _ in first if nn >= 1][0]
            prev_t, prev_n = start
        at = [r for r in rss if r[0] <= t]
        out.append({"tenth": k, "step": n, "t_s": round(t, 1),
                    "images_per_s": round((n - prev_n) * batch / (t - prev_t), 1) if t > prev_t else None,
                    "rss_main_mb": round(at[-1][2], 1) if at else None,
                    "rss_worker_mb": round(at[-1][3], 1) if at else None})
        prev_t, prev_n = t, n
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" not in argv:
        print("bench_stream: give the training command after --", file=sys.stderr)
        return 2
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--log", type=Path, help="the command's stderr (default: JSON's name + .log)")
    p.add_argument("--stop-after-steps", type=int, default=0)
    p.add_argument("--copy-at", nargs=3, metavar=("STEP", "RUN", "COPY"))
    args, cmd = p.parse_args(argv[:cut]), argv[cut + 1:]
    batch = int(cmd[cmd.index("--batch-size") + 1]) if "--batch-size" in cmd else 64
    args.json.parent.mkdir(parents=True, exist_ok=True)
    imports = import_seconds()
    io0, t0 = _io(), time.perf_counter()
    # the bar, not pipeline.progress's plain lines (its stderr is a pipe): BAR reads every update
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "LIMIT_PROGRESS": "bar"})
    w = Watch(proc, t0)
    log = open(args.log or args.json.with_suffix(".log"), "wb")
    threads = [threading.Thread(target=w.read_bar, args=(log,), daemon=True),
               threading.Thread(target=w.sample_rss, daemon=True)]
    for th in threads:
        th.start()
    copied, killed = None, False
    while proc.poll() is None:
        time.sleep(0.2)
        if args.copy_at and copied is None and w.n >= int(args.copy_at[0]) + 1:
            shutil.copytree(args.copy_at[1], args.copy_at[2], ignore=shutil.ignore_patterns(".lock*"),
                            dirs_exist_ok=False)
            copied = round(time.perf_counter() - t0, 1)
        if args.stop_after_steps and w.n >= args.stop_after_steps:
            os.killpg(proc.pid, signal.SIGKILL)
            killed = True
            break
    rc = proc.wait()
    wall = time.perf_counter() - t0
    imports = min(imports, import_seconds())      # the faster of a cold and a warm import
    w.done.set()
    threads[0].join(timeout=5)
    log.close()
    io1 = _io()
    starts = [t for t, _, n, _ in w.bar if n >= 1]
    result = {"cmd": cmd, "rc": rc, "killed_after_steps": args.stop_after_steps if killed else None,
              "import_s": imports, "wall_s": round(wall, 1),
              "first_step_s": round(starts[0], 2) if starts else None,
              "first_step_minus_import_s": round(starts[0] - imports, 2) if starts else None,
              "copied_at_s": copied, "rchar": io1["rchar"] - io0["rchar"], "wchar": io1["wchar"] - io0["wchar"],
              "peak_rss_main_mb": max((r[2] for r in w.rss), default=None),
              "peak_rss_worker_mb": max((r[3] for r in w.rss), default=None),
              "tenths": tenths(w.bar, w.rss, batch) if w.bar else [], "load_avg_after": os.getloadavg()}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("tenths", "cmd")}))
    for row in result["tenths"]:
        print(row)
    return 0 if rc == 0 or killed else 1


if __name__ == "__main__":
    sys.exit(main())
