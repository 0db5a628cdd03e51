"""End to end: train/limit.py on tiny real shards, its outputs, and its one-line errors."""
import json

import pytest
import timm
import torch

import models.backbones  # noqa: F401  (registers mnist_cnn with timm)
from tests.shardkit import make_digit_shards
from train.limit import cli


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("digits"), n_train=1000, n_test=300)


def run(shards, out, *extra):
    argv = ["--data", str(shards / "digits-{000..007}.tar"), "--model", "mnist_cnn", "--epochs", "2",
            "--batch-size", "64", "--workers", "0", "--out", str(out), *extra]
    return cli(argv)


def test_ce_run_learns_and_writes_its_outputs(digit_shards, tmp_path):
    assert run(digit_shards, tmp_path / "ce", "--max-train-samples", "600") == 0
    out = tmp_path / "ce"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    for key in ("train_loss", "train_acc", "train_acc_clean", "val_acc", "test_acc", "samples_seen",
                "samples_skipped", "images_per_s", "data_wait_frac", "wall_s"):
        assert key in rows[-1]
    assert rows[-1]["samples_seen"] == 600
    final = json.loads((out / "final.json").read_text())
    assert final["test_acc"] > 0.9 and 0 <= final["best_epoch"] <= 1
    assert json.loads((out / "config.json").read_text())["model"] == "mnist_cnn"
    # a trained classifier leaves the project with timm alone
    model = timm.create_model("mnist_cnn", num_classes=10,
                              checkpoint_path=str(out / "checkpoints/best/model.safetensors"))
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_limit_run_with_noise_and_memorization_metrics(digit_shards, tmp_path):
    assert run(digit_shards, tmp_path / "lim", "--method", "limit", "--noise", "uniform:0.5",
               "--beta", "10", "--predictor-model", "mnist_cnn_bn") == 0
    row = json.loads((tmp_path / "lim" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["train_acc_flipped"] is not None and row["train_acc_kept"] is not None
    assert (tmp_path / "lim/checkpoints/last/predictor.safetensors").exists()


def test_head_mode_and_init_from_ce(digit_shards, tmp_path):
    assert run(digit_shards, tmp_path / "ce", "--epochs", "1") == 0
    assert run(digit_shards, tmp_path / "head", "--epochs", "1", "--method", "limit",
               "--predictor", "head", "--init-from", str(tmp_path / "ce"), "--init-target", "classifier") == 0
    assert run(digit_shards, tmp_path / "init", "--epochs", "1", "--method", "limit",
               "--init-from", str(tmp_path / "ce"), "--init-target", "both") == 0


def test_resume_continues_after_the_last_epoch(digit_shards, tmp_path):
    assert run(digit_shards, tmp_path / "r", "--epochs", "1") == 0
    assert run(digit_shards, tmp_path / "r", "--epochs", "2", "--resume", "auto") == 0
    rows = [json.loads(line) for line in (tmp_path / "r/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]


@pytest.mark.parametrize("extra, message", [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-1"], "--batch-size"),
    (["--noise", "uniform:2"], "--noise"),
    (["--noise", "pair:0.3", "--noise-pairs", "1>42"], "no class named"),
    (["--model", "no_such_net"], "unknown model"),
    (["--pretrained", "/nonexistent.safetensors"], "--pretrained"),
    (["--resume", "/nonexistent"], "no checkpoint"),
    (["--init-from", "/nonexistent", "--method", "limit"], "no checkpoint"),
    (["--method", "fw"], "--init-from"),
    (["--predictor-warmup", "1"], "--predictor-warmup"),
    (["--predictor-warmup", "-1", "--method", "limit"], "--predictor-warmup"),
    (["--max-train-samples", "100000"], "exceeds"),
])
def test_bad_flags_give_one_line_and_exit_2(digit_shards, tmp_path, capsys, extra, message):
    assert run(digit_shards, tmp_path / "bad", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_missing_shards_and_card(tmp_path, capsys):
    assert cli(["--data", str(tmp_path / "x-{000..003}.tar"), "--out", str(tmp_path / "o")]) == 2
    assert "shard not found" in capsys.readouterr().err
    (tmp_path / "lone-000.tar").write_bytes(b"")
    assert cli(["--data", str(tmp_path / "lone-000.tar"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset card not found" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--method", "bogus"], ["--epochs", "x"], ["--no-such-flag"]])
def test_argparse_errors_are_one_line(tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as e:
        cli(["--data", "x", *argv])
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_baselines_run_end_to_end(digit_shards, tmp_path):
    assert run(digit_shards, tmp_path / "ce", "--epochs", "1", "--noise", "uniform:0.4") == 0
    for method in ("mae", "gce", "fw", "dmi"):
        extra = ["--init-from", str(tmp_path / "ce")] if method in ("fw", "dmi") else []
        assert run(digit_shards, tmp_path / method, "--epochs", "1", "--method", method,
                   "--noise", "uniform:0.4", *extra) == 0, method
        assert json.loads((tmp_path / method / "final.json").read_text())["test_acc"] is not None


def test_balanced_epochs_end_to_end(digit_shards, tmp_path):
    assert run(digit_shards, tmp_path / "bal", "--balance", "300", "--noise", "uniform:0.2") == 0
    rows = [json.loads(line) for line in (tmp_path / "bal/metrics.jsonl").read_text().splitlines()]
    assert [r["samples_seen"] for r in rows] == [300, 300]
