"""DALI under DDP over several epochs: every rank reads the shards its pipeline was built on
and takes exactly the steps the loader planned, so every sample is read once per epoch."""
import pytest
import torch

from pipeline import dali
from pipeline import loader as data
from pipeline.shards import Part
from tests.shardkit import make_digit_shards

needs_dali = pytest.mark.skipif(not dali.dali_available(), reason="nvidia-dali is not installed")


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory):
    # 8 train shards: 7 x 90 + 70 samples
    return make_digit_shards(tmp_path_factory.mktemp("dali-ddp"), n_train=875, n_test=100, shard_size=90)


@needs_dali
def test_dali_ranks_read_every_sample_once_in_every_epoch(uneven_shards):
    ds = data.resolve([str(uneven_shards)])
    world, epochs = 7, 8
    loaders = []
    for rank in range(world):
        ls = data.build_loaders(ds, data.spec_from_card(ds.card), batch_size=32, workers=1, seed=0,
                                noise=data.noise_table(ds, "none", "", 0), keep=None, part=Part(rank, world),
                                backend="dali")
        loaders.append(ls["train"])
    for epoch in range(epochs):
        seen = []
        for rank, ld in enumerate(loaders):
            batches = list(ld(epoch))
            surplus = [r for b in batches for r in b.skipped if "surplus" in r[2]]
            assert not surplus, f"epoch {epoch} rank {rank}: read more than planned"
            assert sum(1 for b in batches if len(b)) == ld.steps(epoch) == loaders[0].steps(epoch)
            seen += torch.cat([b.index for b in batches if len(b) and not b.pad]).tolist()
        assert len(seen) == len(set(seen)) == ds.card["splits"]["train"]["count"], f"epoch {epoch}"
