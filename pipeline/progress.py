"""Progress for people and for batch jobs. On a terminal: a tqdm bar, as before. When the stream
is not a terminal (SLURM, Kubernetes, `| tee`, a file): one plain line every `interval`
seconds (step or count, rate, running loss, ETA) and none in between, because tqdm's
carriage-return redraws are written as they are into a log file: its default 0.1 s refresh
adds up to about 36,000 updates an hour, where a line every 30 s is 120 an hour (a 30-epoch
run of an hour an epoch: ~360 KB of log).

    bar = progress.bar(total=steps, desc="epoch 3", unit="step", stats=lambda: {"images": n, "loss": l})
    for ...: bar.update()
    bar.close()

`stats` is called only when a line is printed (never per update, never on a terminal), so a
stats function that reads device counters costs one host sync per line, not per step.

LIMIT_PROGRESS=bar or =lines in the environment forces one form (auto otherwise): a tool that
reads the bar through a pipe (tools/bench_stream.py) asks for the bar. LIMIT_PROGRESS_INTERVAL
(seconds) is the interval of a caller that gives none (training has no flag for it yet)."""
import os
import sys
import time

from tqdm import tqdm

DEFAULT_INTERVAL = 30.0        # seconds between plain lines: ~120 lines an hour of work


def bar(total: int | None = None, desc: str = "", *, unit: str = "it", initial: int = 0,
        disable: bool = False, leave: bool = True, interval: float | None = None, stats=None,
        stream=None, clock=time.monotonic, **tqdm_kwargs):
    """A tqdm bar when `stream` (default stderr) is a terminal, else Lines. `interval` (seconds,
    None = DEFAULT_INTERVAL) applies to Lines only. Lines ends with a closing line (totals, average
    rate) when it printed any and `leave` (tqdm's: keep the bar); the training loop passes
    leave=False, as it prints its own line per epoch."""
    stream = sys.stderr if stream is None else stream
    if disable or _wants_bar(stream):
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, leave=leave,
                    file=stream, **tqdm_kwargs)
    return Lines(total, desc, unit=unit, initial=initial, leave=leave,
                 interval=default_interval() if interval is None else interval, stats=stats,
                 stream=stream, clock=clock)


def default_interval() -> float:
    """LIMIT_PROGRESS_INTERVAL seconds when set to a number >= 0, else DEFAULT_INTERVAL."""
    try:
        value = float(os.environ.get("LIMIT_PROGRESS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value >= 0 else DEFAULT_INTERVAL


def _wants_bar(stream) -> bool:
    forced = os.environ.get("LIMIT_PROGRESS", "auto")
    return forced == "bar" or (forced != "lines" and _isatty(stream))


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):      # a closed or file-like stream without isatty
        return False


class Lines:
    """tqdm's update/close/n interface, writing one line per `interval` seconds.

    A line: `DESC: N/TOTAL UNIT (P%) | R img/s | loss L | elapsed H:MM:SS | ETA H:MM:SS`. The
    rate is images per second when `stats()` returns {"images": count so far} (the training
    loop counts steps, and a step is a batch), else UNIT per second; both over the last
    interval (the current speed), while the ETA uses the average since the start (steadier)."""

    def __init__(self, total, desc, *, unit="it", initial=0, leave=True, interval=DEFAULT_INTERVAL,
                 stats=None, stream=None, clock=time.monotonic):
        self.total, self.desc, self.unit, self.n, self.leave = total, desc, unit, initial, leave
        self.interval, self.stats, self.stream, self.clock = max(0.0, interval), stats, stream, clock
        self.start = self.last_t = clock()
        self.start_n, self.last_n, self.last_images, self.closed = initial, initial, None, False
        self.lines = 0

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.clock() - self.last_t >= self.interval:
            self._emit()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave and self.lines:       # a job too short for one line stays silent
            self._emit(final=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _emit(self, final: bool = False) -> None:
        now = self.clock()
        dt = max(now - self.last_t, 1e-9)
        stats = dict(self.stats() or {}) if self.stats else {}
        images = stats.pop("images", None)
        if images is not None:
            since = images - self.last_images if self.last_images is not None else images
            rate = f"{since / dt:,.0f} img/s" if not final else f"{images / max(now - self.start, 1e-9):,.0f} img/s"
            self.last_images = images
        else:
            done = (self.n - self.last_n) if not final else (self.n - self.start_n)
            rate = f"{done / (dt if not final else max(now - self.start, 1e-9)):,.1f} {self.unit}/s"
        parts = [f"{self.desc}: {self._count()}", rate]
        parts += [f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()]
        parts.append(f"elapsed {_hms(now - self.start)}")
        if not final:
            parts.append(f"ETA {self._eta(now)}")
        print(" | ".join(parts) + (" | done" if final else ""), file=self.stream, flush=True)
        self.lines += 1
        self.last_t, self.last_n = now, self.n

    def _count(self) -> str:
        if not self.total:
            return f"{self.n:,} {self.unit}"
        return f"{self.n:,}/{self.total:,} {self.unit} ({100 * self.n / self.total:.0f}%)"

    def _eta(self, now: float) -> str:
        done, spent = self.n - self.start_n, now - self.start
        if not self.total or done <= 0 or spent <= 0:
            return "?"
        return _hms(max(self.total - self.n, 0) * spent / done)


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
