"""--model-ema: the average's arithmetic, that it is what evaluation scores, that it leaves
training untouched, and that it is saved, resumed and picked up by +init and rank_labels."""
import json

import pytest
import timm
import torch
from safetensors.torch import load_file

import models.backbones  # noqa: F401  (registers mnist_cnn with timm)
from models.ema import Ema
from tests.shardkit import make_digit_shards
from train import checkpoint
from train.limit import cli


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("digits"), n_train=1000, n_test=300)


def run(shards, out, *extra):
    return cli(["--data", str(shards / "digits-{000..007}.tar"), "--model", "mnist_cnn", "--epochs", "2",
                "--batch-size", "64", "--workers", "0", "--max-train-samples", "600", "--out", str(out), *extra])


def test_update_is_a_lerp_of_floats_and_a_copy_of_the_rest():
    src = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = Ema(src, decay=0.75)
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    src.train()(torch.randn(4, 3))                       # moves BN statistics, counts a batch
    ema.update()
    now, live = ema.module.state_dict(), src.state_dict()
    for k, v in now.items():
        want = before[k] + 0.25 * (live[k] - before[k]) if v.is_floating_point() else live[k]
        assert torch.allclose(v, want), k
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training


def test_training_is_untouched_and_evaluation_scores_the_average(digit_shards, tmp_path):
    assert run(digit_shards, tmp_path / "plain") == 0
    assert run(digit_shards, tmp_path / "ema", "--model-ema", "--model-ema-decay", "0.999999") == 0
    best = lambda name, f: load_file(tmp_path / name / "checkpoints" / "last" / f)  # noqa: E731
    live, plain = best("ema", "model.safetensors"), best("plain", "model.safetensors")
    assert all(torch.equal(live[k], plain[k]) for k in plain)          # the live weights: bit-identical
    rows = {n: [json.loads(x) for x in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("plain", "ema")}
    assert [r["train_loss"] for r in rows["ema"]] == [r["train_loss"] for r in rows["plain"]]
    # an average that barely moves from the initial weights scores near chance: evaluation uses it
    assert rows["plain"][-1]["test_acc"] > 0.8 and rows["ema"][-1]["test_acc"] < 0.5
    # saved beside the live weights, loadable by timm alone, and preferred by +init
    ck = tmp_path / "ema" / "checkpoints" / "best"
    assert checkpoint.classifier_file(ck).name == "model_ema.safetensors"
    timm.create_model("mnist_cnn", num_classes=10, checkpoint_path=str(ck / "model_ema.safetensors"))


def test_resume_needs_and_restores_the_average(digit_shards, tmp_path):
    assert run(digit_shards, tmp_path / "a", "--epochs", "1") == 0
    assert run(digit_shards, tmp_path / "a", "--resume", "auto", "--model-ema") == 2   # saved without one
    assert run(digit_shards, tmp_path / "b", "--epochs", "1", "--model-ema") == 0
    assert run(digit_shards, tmp_path / "b", "--resume", "auto", "--model-ema") == 0
    assert run(digit_shards, tmp_path / "c", "--model-ema") == 0
    b, c = (load_file(tmp_path / n / "checkpoints" / "last" / "model_ema.safetensors") for n in "bc")
    assert all(torch.equal(b[k], c[k]) for k in c)                     # resumed = uninterrupted
