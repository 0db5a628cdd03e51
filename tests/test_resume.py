"""Exact resume: a run killed with SIGKILL after a checkpoint and resumed ends with the same
weights, bit for bit, and the same metrics as an uninterrupted run (CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.shardkit import make_digit_shards
from train.limit import cli

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("train_loss", "train_acc", "train_acc_flipped", "val_acc", "test_acc", "samples_seen")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("resume"), n_train=600, n_test=100, shard_size=100)


def argv(shards, out):
    return ["--data", str(shards), "--model", "mnist_cnn", "--method", "limit", "--noise", "uniform:0.5",
            "--epochs", "2", "--batch-size", "32", "--workers", "2", "--save-every", "7",
            "--sample", "--out", str(out)]


def launch(args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "train/limit.py", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weights(out):
    ck = out / "checkpoints" / "last"
    return {**load_file(ck / "model.safetensors"), **{f"p.{k}": v for k, v in load_file(ck / "predictor.safetensors").items()}}


def rows(out):
    return [{k: r[k] for k in ("epoch", *METRICS)} for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]


def test_sigkill_then_resume_matches_an_uninterrupted_run(shards, tmp_path):
    ref = launch(argv(shards, tmp_path / "ref"))
    victim = launch(argv(shards, tmp_path / "cut"))
    meta = tmp_path / "cut" / "checkpoints" / "last" / "meta.json"
    deadline = time.time() + 240
    while not (meta.exists() and json.loads(meta.read_text()).get("step", 0) >= 14) and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert not (tmp_path / "cut" / "final.json").exists(), "the run ended before it could be killed"
    resumed = launch([*argv(shards, tmp_path / "cut"), "--resume", "auto"])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()[-2000:]
    assert ref.wait(timeout=300) == 0, ref.stderr.read()[-2000:]
    a, b = weights(tmp_path / "ref"), weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    assert all((a[k] == b[k]).all() for k in a), [k for k in a if not (a[k] == b[k]).all()][:5]
    assert rows(tmp_path / "ref") == rows(tmp_path / "cut")


def test_missing_or_corrupt_checkpoint_is_one_line_exit_2(shards, tmp_path, capsys):
    assert cli([*argv(shards, tmp_path / "r"), "--resume", str(tmp_path / "nothing")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert cli([*argv(shards, tmp_path / "r"), "--epochs", "1", "--save-every", "0"]) == 0
    capsys.readouterr()
    (tmp_path / "r/checkpoints/last/model.safetensors").write_bytes(b"garbage")
    assert cli([*argv(shards, tmp_path / "r"), "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "damaged" in err[0]
