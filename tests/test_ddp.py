"""Data parallelism: shards split over ranks and workers cover every sample exactly once,
every rank takes the same number of steps, and a real 2-process DDP run over gloo agrees."""
import json
import os
import shutil
import subprocess
import sys

from collections import Counter

import numpy as np
import pytest
import torch

from pipeline import loader as data
from pipeline.shards import DataError, Part
from tests.shardkit import make_digit_shards


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory):
    # 700 train samples in shards of 90: 8 shards of unequal size (the last holds 70)
    return make_digit_shards(tmp_path_factory.mktemp("ddp"), n_train=875, n_test=100, shard_size=90)


def rank_batches(ds, rank, world, workers, keep=None, epoch=0, batch_size=32):
    aug = data.spec_from_card(ds.card)
    loaders = data.build_loaders(ds, aug, batch_size=batch_size, workers=workers, seed=0,
                                 noise=data.noise_table(ds, "none", "", 0), keep=keep, part=Part(rank, world))
    return list(loaders["train"](epoch)), loaders["train"].steps(epoch)


@pytest.mark.parametrize("world, workers", [(2, 2), (3, 1), (2, 0)])
def test_ranks_cover_the_split_once_and_step_together(uneven_shards, world, workers):
    ds = data.resolve([str(uneven_shards)])
    for keep in (None, data.selection(ds, 500, seed=1)):
        seen, steps = [], set()
        for rank in range(world):
            batches, planned = rank_batches(ds, rank, world, workers, keep)
            real = [b for b in batches if not b.pad and len(b)]
            steps.add(sum(1 for b in batches if len(b)))
            assert len(steps) == 1 and planned in steps            # same count on every rank
            seen += torch.cat([b.index for b in real]).tolist()
        expected = ds.card["splits"]["train"]["count"] if keep is None else 500
        assert len(seen) == len(set(seen)) == expected


def test_fewer_shards_than_ranks_is_an_error_not_a_hang(uneven_shards):
    ds = data.resolve([str(uneven_shards / "digits-{000..001}.tar")])
    with pytest.raises(DataError, match="cannot feed 3 ranks"):
        rank_batches(ds, 0, 3, 1)


def test_three_shards_two_ranks_two_workers(uneven_shards):
    ds = data.resolve([str(uneven_shards / "digits-{000..002}.tar")])
    counts = [sum(len(b) for b in rank_batches(ds, r, 2, 2)[0] if not b.pad) for r in (0, 1)]
    assert sum(counts) == 270


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate's launcher is not installed beside this python")
def test_two_process_ddp_over_gloo(uneven_shards, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [os.path.join(os.path.dirname(sys.executable), "accelerate"), "launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--dynamo_backend", "no",
           "--mixed_precision", "bf16", "train/limit.py", "--data", str(uneven_shards),
           "--model", "mnist_cnn", "--epochs", "2", "--batch-size", "32", "--workers", "1",
           "--max-train-samples", "500", "--method", "limit", "--out", str(tmp_path / "run")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["samples_seen"] for r in rows] == [500, 500]
    assert all(r["test_acc"] is not None for r in rows)


def test_evaluation_with_fewer_shards_than_ranks(uneven_shards):
    ds = data.resolve([str(uneven_shards)])
    aug = data.spec_from_card(ds.card)
    seen = []
    for rank in range(4):                       # the test split has 2 shards
        loaders = data.build_loaders(ds, aug, batch_size=32, workers=1, seed=0,
                                     noise=data.noise_table(ds, "none", "", 0), keep=None, part=Part(rank, 4))
        seen += [i for b in loaders["test"](0) for i in b.index.tolist()]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == ds.card["splits"]["test"]["count"]


def test_shards_through_a_pipe_url(uneven_shards):
    """Object-store style URLs: webdataset's gopen runs the command and reads its stdout."""
    ds = data.resolve([f"pipe:cat {uneven_shards}/digits-{{000..007}}.tar"])
    assert ds.urls["train"][0].startswith("pipe:cat ")
    index = [i for r in (0, 1) for b in rank_batches(ds, r, 2, 1)[0] if not b.pad for i in b.index.tolist()]
    assert sorted(index) == sorted(set(index)) and len(index) == ds.card["splits"]["train"]["count"]


def test_class_balanced_resampling(uneven_shards):
    ds = data.resolve([str(uneven_shards)])
    noise = data.noise_table(ds, "uniform:0.3", "", 0)
    bal = data.selection(ds, balance=200, seed=0, noise=noise)
    per_epoch = []
    for epoch in (0, 1):
        seen, labels = [], []
        for rank in (0, 1):
            aug = data.spec_from_card(ds.card)
            ld = data.build_loaders(ds, aug, batch_size=16, workers=1, seed=0, noise=noise, keep=bal,
                                    part=Part(rank, 2))["train"]
            for b in ld(epoch):
                if len(b) and not b.pad:
                    seen += b.index.tolist()
                    labels += b.labels.tolist()
        assert len(seen) == len(set(seen)) == 200
        assert sorted(Counter(labels).values()) == [20] * 10        # 200 / 10 classes, given labels
        per_epoch.append(sorted(seen))
    assert per_epoch[0] != per_epoch[1]                              # redrawn each epoch
    assert np.array_equal(bal.mask(1), data.selection(ds, balance=200, seed=0, noise=noise).mask(1))   # (seed, epoch) only
