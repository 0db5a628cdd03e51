"""Files from strangers run no commands; a run folder is never lost without a flag that says so;
a damaged run file is one line, not a traceback (README "Security", "Run folders")."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.shardkit import make_digit_shards, train_argv
from tools.rank_labels import cli as rank_cli
from train import runfolder
from train.config import ConfigError
from train.limit import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("trust"), n_train=300, n_test=100, shard_size=100)


argv = train_argv


@pytest.fixture(scope="module")
def finished_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    assert cli(argv(shards, out)) == 0
    return out


def one_line(capsys) -> str:
    """The one error line (progress bars share stderr), and no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err[-1000:]
    return lines[0]


def copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


# ---- item 1: URLs read from files run nothing ----

def test_pipe_url_in_a_run_config_runs_nothing(finished_run, shards, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "sent")
    marker = tmp_path / "pwned"
    cfg = json.loads((run / "config.json").read_text())
    cfg["data"] = [f"pipe:touch {marker}; cat {shards}/digits-000.tar"]
    (run / "config.json").write_text(json.dumps(cfg))
    assert rank_cli(["--run", str(run), "--out", str(tmp_path / "labels")]) == 2
    line = one_line(capsys)
    assert "config.json" in line and "data" in line and "--trust-urls" in line
    assert not marker.exists()


def test_pipe_shard_in_a_card_runs_nothing(shards, tmp_path, capsys, monkeypatch):
    folder = shutil.copytree(shards, tmp_path / "sent")
    marker = tmp_path / "pwned"
    card = json.loads((folder / "digits.json").read_text())
    card["splits"]["train"]["shards"][0]["file"] = f"pipe:touch {marker}; cat digits-000.tar"
    (folder / "digits.json").write_text(json.dumps(card))
    monkeypatch.chdir(folder)             # a card in the current folder: "./pipe:..." is "pipe:..."
    assert cli(argv(".", tmp_path / "run")) == 2
    line = one_line(capsys)
    assert "digits.json" in line and "splits.train.shards[0].file" in line
    assert not marker.exists()


def test_a_card_naming_files_outside_its_folder_is_refused(shards, tmp_path, capsys):
    folder = shutil.copytree(shards, tmp_path / "sent")
    card = json.loads((folder / "digits.json").read_text())
    card["splits"]["val"]["shards"][0]["file"] = "../../etc/passwd"
    (folder / "digits.json").write_text(json.dumps(card))
    assert cli(argv(folder, tmp_path / "run")) == 2
    assert "not beside the card" in one_line(capsys)


def test_a_card_of_the_wrong_shape_is_one_line(shards, tmp_path, capsys):
    folder = shutil.copytree(shards, tmp_path / "sent")
    card = json.loads((folder / "digits.json").read_text())
    card["splits"]["train"]["shards"] = "all of them"
    (folder / "digits.json").write_text(json.dumps(card))
    assert cli(argv(folder, tmp_path / "run")) == 2
    assert "splits.train" in one_line(capsys)


def test_pipe_urls_typed_on_the_command_line_still_work(shards, tmp_path):
    assert cli(argv(f"pipe:cat {shards}/digits-{{000..002}}.tar", tmp_path / "run")) == 0


# ---- item 2: one run per folder, and never over another run ----

def test_a_rerun_without_resume_is_refused_and_overwrite_replaces(finished_run, tmp_path, capsys, shards):
    run = copy_run(finished_run, tmp_path / "r")
    before = (run / "metrics.jsonl").read_bytes()
    assert cli(argv(shards, run)) == 2
    assert "holds a run" in one_line(capsys)
    assert (run / "metrics.jsonl").read_bytes() == before and (run / "checkpoints" / "best").is_dir()
    (run / "checkpoints" / "stray").mkdir()
    assert cli(argv(shards, run, "--overwrite")) == 0
    assert not (run / "checkpoints" / "stray").exists()
    assert not (run / runfolder.LOCK).exists()


def test_the_lock_refuses_a_live_owner_and_takes_over_a_dead_one(tmp_path, capsys):
    held = runfolder.RunLock(tmp_path).acquire()
    with pytest.raises(ConfigError, match=f"in use by pid {os.getpid()}"):
        runfolder.RunLock(tmp_path).acquire()
    held.release()
    assert not (tmp_path / runfolder.LOCK).exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / runfolder.LOCK).write_text(json.dumps({"pid": dead.pid, "host": runfolder.socket.gethostname(),
                                                       "started": 0}))
    lock = runfolder.RunLock(tmp_path).acquire()
    assert "stale lock" in capsys.readouterr().err
    assert json.loads((tmp_path / runfolder.LOCK).read_text())["pid"] == os.getpid()
    lock.release()


def test_two_runs_on_one_out_the_second_is_refused(shards, tmp_path):
    out = tmp_path / "shared"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "train/limit.py", *argv(shards, out, "--epochs", "50")], cwd=ROOT,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (out / "config.json").exists() and time.time() < deadline:
            time.sleep(0.1)
        second = subprocess.run([sys.executable, "train/limit.py", *argv(shards, out, "--resume", "auto")],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "in use by pid" in second.stderr, second.stderr[-500:]
    finally:
        first.kill()
        first.wait()


# ---- item 3: resuming a finished run changes nothing ----

def test_resume_of_a_finished_run_changes_nothing(finished_run, shards, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    final = (run / "final.json").read_bytes()
    assert cli(argv(shards, run, "--resume", "auto")) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (run / "final.json").read_bytes() == final
    assert cli(argv(shards, run, "--resume", "auto", "--epochs", "2")) == 0     # --epochs grew: continues
    assert json.loads((run / "final.json").read_text())["epochs"] == 2
    assert json.loads((run / "resumes.jsonl").read_text().splitlines()[0])["changed"]["epochs"] == [1, 2]


# ---- item 4: a resume is the same experiment ----

@pytest.mark.parametrize("flags, named", [(("--noise", "uniform:0.5"), "--noise"),
                                          (("--optimizer", "sgd"), "--optimizer"),
                                          (("--weight-decay", "0.1"), "--weight-decay")])
def test_resume_with_another_experiments_flags_is_refused(finished_run, shards, tmp_path, capsys, flags, named):
    run = copy_run(finished_run, tmp_path / "r")
    assert cli(argv(shards, run, "--resume", "auto", "--epochs", "2", *flags)) == 2
    line = one_line(capsys)
    assert named in line and "another experiment" in line
    assert json.loads((run / "final.json").read_text())["epochs"] == 1


# ---- item 10: damaged run files, relative paths ----

def test_a_half_written_metrics_line_is_tolerated_and_other_damage_named(finished_run, shards, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    (run / "final.json").unlink()                                   # as if killed before the end
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "train_lo')
    assert cli(argv(shards, run, "--resume", "auto", "--epochs", "2")) == 0
    capsys.readouterr()
    assert [r["epoch"] for r in runfolder.read_jsonl(run / "metrics.jsonl")] == [0, 1]
    (run / "final.json").unlink()
    (run / "metrics.jsonl").write_text('{"epoch": 0}\nnot json\n{"epoch": 1}\n')
    assert cli(argv(shards, run, "--resume", "auto", "--epochs", "3")) == 2
    assert "metrics.jsonl: line 2 is damaged" in one_line(capsys)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"data": 7}', '{"data": ["x"], "lr": "fast"}'])
def test_a_damaged_run_config_is_one_line_in_rank_labels(finished_run, tmp_path, capsys, text):
    run = copy_run(finished_run, tmp_path / "r")
    (run / "config.json").write_text(text)
    assert rank_cli(["--run", str(run), "--out", str(tmp_path / "labels")]) == 2
    assert "config.json" in one_line(capsys)


def test_config_names_shards_absolutely_so_rank_labels_runs_anywhere(shards, tmp_path, monkeypatch):
    monkeypatch.chdir(shards.parent)
    assert cli(argv("shards", tmp_path / "r")) == 0
    assert json.loads((tmp_path / "r" / "config.json").read_text())["data"] == [str(shards)]
    monkeypatch.chdir(tmp_path)
    assert rank_cli(["--run", str(tmp_path / "r"), "--out", str(tmp_path / "labels")]) == 0


# ---- item 5 (loader side): shards the card does not list ----

def test_a_pattern_matching_shards_the_card_does_not_list_is_refused(shards, tmp_path, capsys):
    folder = shutil.copytree(shards, tmp_path / "old")
    shutil.copy(folder / "digits-000.tar", folder / "digits-003.tar")   # left by an earlier conversion
    assert cli(argv(folder / "digits-{000..003}.tar", tmp_path / "run")) == 2
    assert "digits-003.tar is not listed in the dataset card" in one_line(capsys)


# ---- item 11: non-finite numbers ----

@pytest.mark.parametrize("flag", ["--lr", "--beta", "--weight-decay"])
def test_non_finite_flags_are_refused(shards, tmp_path, capsys, flag):
    assert cli(argv(shards, tmp_path / "r", flag, "inf")) == 2
    assert "finite" in one_line(capsys)


def test_a_diverging_run_stops_with_one_line_and_saves_nothing_bad(shards, tmp_path, capsys):
    assert cli(argv(shards, tmp_path / "r", "--lr", "1e30", "--epochs", "3")) == 2
    line = one_line(capsys)
    assert "not finite" in line and "--lr" in line
    assert not (tmp_path / "r" / "final.json").exists()
    assert not (tmp_path / "r" / runfolder.LOCK).exists()


# ---- item 12: Ctrl-C ----

def test_ctrl_c_stops_with_one_line_and_stays_resumable(shards, tmp_path):
    out = tmp_path / "r"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "train/limit.py", *argv(shards, out, "--epochs", "6", "--workers", "1")],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / "last" / "meta.json").exists() and time.time() < deadline:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130, err[-1000:]
    assert "Traceback" not in err
    said = [ln for ln in err.splitlines() if "limit:" in ln]        # a progress bar may share the line
    assert len(said) == 1 and said[0].endswith("limit: interrupted; the last checkpoint is kept (continue with --resume auto)")
    assert not (out / runfolder.LOCK).exists()
    assert cli(argv(shards, out, "--resume", "auto", "--epochs", "6")) == 0
    assert json.loads((out / "final.json").read_text())["epochs"] == 6


def test_resume_with_fewer_epochs_than_done_is_one_line(finished_run, shards, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    (run / "final.json").unlink()                         # killed after its last checkpoint
    assert cli(argv(shards, run, "--resume", "auto", "--epochs", "1")) == 2
    assert "raise --epochs" in one_line(capsys)

