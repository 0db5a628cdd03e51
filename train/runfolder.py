"""The run folder (--out) as something that can be lost: a lock for the run's lifetime, the
rule that a folder holding a run is only continued (--resume) or replaced (--overwrite),
a finished run that a resume leaves as it is, and the check that a resume continues the
same experiment. docs/architecture.md, "Run folders"."""
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

from pipeline import safe_io
from train.config import ConfigError

LOCK = ".lock"
# What a run writes into --out; --overwrite deletes these and nothing else.
RUN_FILES = ("config.json", "metrics.jsonl", "skipped.jsonl", "final.json", "curves.png",
             "summary.csv", "resumes.jsonl")
RUN_DIRS = ("checkpoints",)
MAX_JSON = 64 << 20      # config.json, final.json: kilobytes; a cap so /dev/zero cannot fill memory
MAX_LOG = 1 << 30        # metrics.jsonl: ~1 kB an epoch
# Flags a resume may change: they decide how long or how the run is watched, not what it
# learns. Anything else changed makes it another experiment (mid-epoch, --workers too: the
# saved position is per worker).
SAFE_ON_RESUME = {"epochs", "patience", "save_every", "workers", "log_with", "log_interval", "cache_eval",
                  "max_skip_frac", "resume", "out", "overwrite", "trust_urls", "backend"}


# ---- lock ----
class RunLock:
    """OUT/.lock holds {"pid", "host", "started"} while a run writes the folder. Created by a
    hard link from a complete temporary file, so the lock exists whole or not at all, and two
    runs cannot both create it. A lock whose process is gone (same host) is taken over."""

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        self.held = False

    def acquire(self) -> "RunLock":
        # a fresh exclusive name: a fixed one could be a link planted by whoever sent the folder
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f"{LOCK}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(self.me) + "\n")
        tmp = Path(tmp)
        try:
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return self
                except FileExistsError:
                    self._take_over_if_stale()
            raise ConfigError(f"--out {self.path.parent}: could not take the lock {self.path}")
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        if not self.path.exists() and not self.path.is_symlink():
            return                                  # released meanwhile: try again
        owner = check_lock(self.path)
        pid, host = owner["pid"], owner["host"]
        if host != self.me["host"] or _alive(pid):
            since = time.strftime("%Y-%m-%d %H:%M", time.localtime(owner.get("started", 0)))
            raise ConfigError(f"--out {self.path.parent}: in use by pid {pid} on {host} since {since}"
                              f" (lock {self.path}; delete it only if that run is gone)")
        print(f"limit: taking over the stale lock of pid {pid} (no longer running) in {self.path.parent}",
              file=sys.stderr)
        self.path.unlink(missing_ok=True)           # a link is removed as a link

    def release(self) -> None:
        if self.held:
            try:
                if check_lock(self.path)["pid"] == self.me["pid"]:
                    self.path.unlink()
            except ValueError:
                pass                                # gone or replaced: not ours to remove
            self.held = False


MAX_PID = 2 ** 22                                   # Linux's pid_max ceiling (4,194,304)


def check_lock(path: Path) -> dict:
    """A lock file's {"pid", "host", "started"}, checked: a pid os.kill can take (a 20-digit
    one overflows it), a host name, a time. Anything else is one line naming the file."""
    bad = ConfigError(f"--out {path.parent}: unreadable lock file {path}; delete it if no run is using this folder")
    try:
        owner = json.loads(safe_io.read_capped(path, 4096, "lock file"))
    except (ValueError, RecursionError):
        raise bad from None
    if not isinstance(owner, dict):
        raise bad
    pid, host, started = owner.get("pid"), owner.get("host"), owner.get("started", 0)
    if (not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid <= MAX_PID
            or not isinstance(host, str) or len(host) > 255
            or not isinstance(started, (int, float)) or isinstance(started, bool) or not 0 <= started < 1e11):
        raise bad
    return {"pid": pid, "host": host, "started": started}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True                                 # exists, owned by someone else
    return True
# ---- end lock ----


def holds_run(out: Path) -> bool:
    return any((Path(out) / name).exists() for name in ("config.json", "final.json", "checkpoints"))


def claim(out: Path, resume: str, overwrite: bool, main_process: bool) -> None:
    """Refuse to start afresh over another run; under --overwrite, delete its files first."""
    if resume or not holds_run(out):
        return
    if not overwrite:
        raise ConfigError(f"--out {out} holds a run (config.json or checkpoints/): pass --resume auto to "
                          "continue it, --overwrite to replace it, or another --out")
    if main_process:        # regular files and real folders only: a link is refused, not followed
        for name in RUN_FILES + RUN_DIRS:
            safe_io.remove(Path(out) / name, missing_ok=True)


def read_json(path: Path, what: str) -> dict:
    """A JSON object from a file that may be damaged: one line naming it, never a traceback."""
    if not Path(path).exists():
        raise ConfigError(f"{what}: {path} not found")
    try:
        obj = json.loads(safe_io.read_capped(path, MAX_JSON, what))
    except (ValueError, RecursionError) as e:   # DataError too: a pipe, a device, too large
        raise ConfigError(f"{what}: {path} is damaged ({_reason(e)})") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{what}: {path} is not a JSON object")
    return obj


def finished(out: Path, epochs: int) -> dict | None:
    """final.json of a run that has nothing left to do with `epochs` (it ran them all, or
    stopped early); None when there is work: no final.json, or --epochs grew past it."""
    path = Path(out) / "final.json"
    if not path.exists():
        return None
    final = read_json(path, "--resume")
    done = final.get("epochs")
    if not isinstance(done, int):
        raise ConfigError(f"--resume: {path} is damaged (no 'epochs')")
    return final if final.get("early_stopped") or epochs <= done else None


def config_changes(saved: dict, now: dict, in_epoch: bool) -> tuple[dict, list[str]]:
    """(safe changes {flag: (old, new)}, refused flags) between a checkpoint's config and this
    command's. Keys the checkpoint lacks (older versions) count as unchanged."""
    safe, refused = {}, []
    for key, new in now.items():
        if key not in saved or _same(saved[key], new):
            continue
        if key in SAFE_ON_RESUME and not (key == "workers" and in_epoch):
            safe[key] = (saved[key], new)
        else:
            refused.append(f"--{key.replace('_', '-')} {saved[key]!r} -> {new!r}")
    return safe, refused


def _same(a, b) -> bool:
    return a == b or (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and list(a) == list(b))


def read_jsonl(path: Path, key: str = "epoch") -> list[dict]:
    """The rows of a JSON-lines log, each an object with an integer `key`. A last line cut off
    by a kill (no newline after it) is dropped; any other damage is one line naming the file
    and the line."""
    text = safe_io.read_capped(path, MAX_LOG, "log").decode("utf-8", errors="replace")
    lines = text.splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get(key), int):
                raise ValueError(f"not an object with an integer {key!r}")
        except ValueError as e:
            if n == len(lines) and not text.endswith("\n"):
                break                               # half-written by a kill: that epoch is redone
            raise ConfigError(f"{path}: line {n} is damaged ({_reason(e)})") from None
        rows.append(row)
    return rows


def write_atomic(path: Path, text: str) -> None:
    """A file that exists whole or not at all: a kill mid-write leaves the old one."""
    safe_io.write_text(path, text)


def _reason(e: Exception) -> str:
    """Why a file did not parse, without its content (json's messages quote none; a
    DataError names the file and the cause)."""
    return getattr(e, "msg", None) or str(e)[:120]


def resume_args(out: Path) -> list[str]:
    """The flags that continue whatever is in `out`: --resume auto where a checkpoint is,
    --overwrite where a run left no checkpoint to continue (killed in its first epoch).
    For scripts (the demo, the reproduction runner) that rerun their own cells."""
    if (Path(out) / "checkpoints" / "last" / "meta.json").exists():
        return ["--resume", "auto"]
    return ["--overwrite"] if holds_run(out) else []
