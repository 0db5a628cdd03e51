"""pipeline/progress.py: a tqdm bar on a terminal, one plain line per interval elsewhere; and the
log of a non-terminal training run (issue 28 item 6)."""
import io
import json

from tqdm import tqdm

from pipeline import progress
from tests.shardkit import make_digit_shards, train_argv
from train.limit import cli


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_terminal_gets_tqdm_and_a_pipe_gets_lines(monkeypatch):
    monkeypatch.delenv("LIMIT_PROGRESS", raising=False)
    assert isinstance(progress.bar(total=3, stream=Tty()), tqdm)
    assert isinstance(progress.bar(total=3, stream=io.StringIO()), progress.Lines)
    monkeypatch.setenv("LIMIT_PROGRESS", "bar")            # a tool that parses the bar asks for it
    assert isinstance(progress.bar(total=3, stream=io.StringIO()), tqdm)
    monkeypatch.setenv("LIMIT_PROGRESS", "lines")
    assert isinstance(progress.bar(total=3, stream=Tty()), progress.Lines)


def test_one_line_per_interval_with_rate_loss_and_eta(monkeypatch):
    monkeypatch.delenv("LIMIT_PROGRESS", raising=False)
    out, clock, seen = io.StringIO(), Clock(), {"images": 0}
    bar = progress.bar(total=100, desc="epoch 2", unit="step", interval=10, stream=out, clock=clock,
                       stats=lambda: {**seen, "loss": 0.25})
    for _ in range(40):                      # 40 steps of 64 images, 1 s each
        clock.t += 1
        seen["images"] += 64
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 5                   # at 10, 20, 30, 40 s and the closing line
    assert lines[0] == "epoch 2: 10/100 step (10%) | 64 img/s | loss 0.2500 | elapsed 0:00:10 | ETA 0:01:30"
    assert lines[-1].endswith("| done") and "40/100" in lines[-1]


def test_lines_without_stats_count_units_and_leave_false_prints_no_closing_line(monkeypatch):
    monkeypatch.delenv("LIMIT_PROGRESS", raising=False)
    out, clock = io.StringIO(), Clock()
    bar = progress.bar(total=None, desc="predict", unit="img", interval=5, stream=out, clock=clock, leave=False)
    for _ in range(3):
        clock.t += 2.5
        bar.update(10)
    bar.close()
    assert out.getvalue().splitlines() == ["predict: 20 img | 4.0 img/s | elapsed 0:00:05 | ETA ?"]


def test_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("LIMIT_PROGRESS_INTERVAL", "2.5")
    assert progress.default_interval() == 2.5
    for bad in ("x", "-1"):
        monkeypatch.setenv("LIMIT_PROGRESS_INTERVAL", bad)
        assert progress.default_interval() == progress.DEFAULT_INTERVAL


def test_a_non_terminal_training_log_is_line_oriented_and_small(tmp_path, capsys, monkeypatch):
    """A tiny run with a line at every step (interval 0, the worst case) against the same run
    drawing tqdm's bar into the same non-terminal stream."""
    shards = make_digit_shards(tmp_path / "d", n_train=500, n_test=100)
    monkeypatch.delenv("LIMIT_PROGRESS", raising=False)
    monkeypatch.setenv("LIMIT_PROGRESS_INTERVAL", "0")
    assert cli(train_argv(shards, tmp_path / "lines", "--epochs", "2")) == 0
    err = capsys.readouterr().err
    steps = [ln for ln in err.splitlines() if ln.startswith("epoch ")]
    per_epoch = json.loads((tmp_path / "lines" / "metrics.jsonl").read_text().splitlines()[0])
    assert "\r" not in err
    assert len(steps) == 2 * -(-per_epoch["samples_seen"] // 64)          # one line per step
    assert all(len(ln) < 160 and "img/s" in ln and "loss" in ln and "ETA" in ln for ln in steps)
    # the default interval (30 s) on the same tiny run: no progress line at all
    monkeypatch.delenv("LIMIT_PROGRESS_INTERVAL")
    assert cli(train_argv(shards, tmp_path / "quiet", "--epochs", "2")) == 0
    assert not [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    # --log-interval overrides the default: a line at every step again
    assert cli(train_argv(shards, tmp_path / "flag", "--epochs", "2", "--log-interval", "0")) == 0
    assert len([ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]) == len(steps)
    # tqdm's bar in a file: every redraw is kept, carriage returns and all
    monkeypatch.setenv("LIMIT_PROGRESS", "bar")
    assert cli(train_argv(shards, tmp_path / "bar", "--epochs", "2")) == 0
    assert "\r" in capsys.readouterr().err


def test_a_job_shorter_than_the_interval_prints_nothing(monkeypatch):
    monkeypatch.delenv("LIMIT_PROGRESS", raising=False)
    out, clock = io.StringIO(), Clock()
    bar = progress.bar(total=10, desc="shards", unit="img", interval=30, stream=out, clock=clock)
    for _ in range(10):
        clock.t += 1
        bar.update()
    bar.close()
    assert out.getvalue() == ""
