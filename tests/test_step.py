"""The training step, defined once (train/step.py): what the loop logs and the benchmarks time."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shardkit import make_digit_shards, train_argv
from train import runfolder
from train.limit import cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("step"), n_train=300, n_test=100, shard_size=100)


argv = train_argv



def test_metrics_log_cross_entropy_and_the_objectives_own_statistics(shards, tmp_path):
    assert cli(argv(shards, tmp_path / "r", "--method", "limit", "--noise", "uniform:0.5")) == 0
    row = runfolder.read_jsonl(tmp_path / "r" / "metrics.jsonl")[0]
    for key in ("train_loss", "train_loss_clean", "train_objective", "train_predictor_loss", "train_mu_sq",
                "val_loss", "test_loss"):
        assert isinstance(row[key], float), key
    # untrained on 10 classes, the classifier's cross-entropy sits near log(10); the surrogate's value does not
    assert 1.5 < row["train_loss"] < 4 and row["train_loss"] != row["train_objective"]
    assert row["train_loss_clean"] < row["train_loss"]          # half of the given labels are wrong


def test_the_step_benchmark_times_the_trainers_step():
    # a subprocess: Accelerate's state (bf16 here) is set once per process
    r = subprocess.run([sys.executable, "tools/bench_step.py", "--model", "mnist_cnn", "--image-size", "28",
                        "--batch-size", "16", "--steps", "2", "--warmup", "1", "--device", "cpu", "--json"],
                       cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(res) == {"ce", "limit", "limit-head"} and all(v["step_s"] > 0 for v in res.values())


def test_a_new_objective_is_one_function_and_one_registry_entry(shards, tmp_path):
    import torch.nn.functional as F

    from train.objectives import REGISTRY, Objective, register

    def smoothed_ce(out, labels):                      # label smoothing 0.1: the whole objective
        loss = F.cross_entropy(out.logits.float(), labels, label_smoothing=0.1)
        return loss, {"smoothing": loss.new_tensor(0.1)}

    register(Objective("smoothed", lambda cfg, transition=None: smoothed_ce))
    try:
        assert cli(argv(shards, tmp_path / "r", "--method", "smoothed")) == 0
    finally:
        del REGISTRY["smoothed"]
    row = runfolder.read_jsonl(tmp_path / "r" / "metrics.jsonl")[0]
    assert row["train_smoothing"] == pytest.approx(0.1) and row["samples_seen"] == 240
    assert json.loads((tmp_path / "r" / "config.json").read_text())["method"] == "smoothed"


def test_samples_skipped_counts_each_epochs_losses_once(shards, tmp_path):
    from tests import hostile
    folder = hostile.copy_set(shards, tmp_path / "shards")
    hostile.damage_samples(folder, "digits-val-000.tar", {2: "garbage_image"})     # val: read every epoch
    hostile.damage_samples(folder, "digits-001.tar", {5: "no_cls"})
    assert cli(argv(folder, tmp_path / "r", "--epochs", "3", "--max-skip-frac", "0.1")) == 0
    rows = runfolder.read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["samples_skipped"] for r in rows] == [2, 2, 2]
    assert json.loads((tmp_path / "r" / "final.json").read_text())["samples_skipped"] == 2


def test_predictor_warmup_holds_the_classifier_and_trains_the_predictor():
    """--predictor-warmup E: for E epochs of steps the classifier's learning rate is 0 (a +init
    classifier is not pulled toward an untrained predictor), the predictor learns; then both."""
    import torch
    from accelerate import Accelerator

    from train.config import Config
    from train.loop import Run
    from train.objectives import make_objective
    from train.setup import build_model, build_optimizer
    from pipeline.augment import AugSpec
    from pipeline.backends import synthetic_batch
    from pipeline.cpu import ReadSpec
    from train.step import train_step

    torch.manual_seed(0)
    cfg = Config(data=["synthetic"], model="mnist_cnn", method="limit", predictor="head", predictor_warmup=1.0)
    acc = Accelerator(cpu=True)
    net = build_model(cfg, 10, 1)
    opt = build_optimizer(cfg, net)
    run = Run(cfg, acc, net, opt, make_objective(cfg), loaders={}, norm=((0.5,), (0.5,)), steps_per_epoch=3,
              out=Path("."))
    weights = lambda m: torch.cat([p.detach().flatten().clone() for p in m.parameters()])  # noqa: E731
    clf, pred = weights(net.classifier), weights(net.predictor)
    spec = ReadSpec(AugSpec(size=28, channels=1), train=True, batch_size=8)
    batch = synthetic_batch(spec, 10, acc.device, (0.5,), (0.5,), channels_last=False)
    for _ in range(3):                                  # the first epoch: the predictor alone
        train_step(run, batch)
    assert torch.equal(weights(net.classifier), clf) and not torch.equal(weights(net.predictor), pred)
    train_step(run, batch)                              # then the classifier too, at the full rate
    assert not torch.equal(weights(net.classifier), clf)
    assert [g["lr"] for g in opt.param_groups] == [cfg.lr, cfg.lr]
