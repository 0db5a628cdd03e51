"""pipeline/backends.py: each backend declares its streams and whether its shard split is fixed,
and the loader asks instead of naming one; DALI's fixed split is held by a check, not a comment;
the synthetic backend feeds the loader and the step benchmarks without reading anything."""
import itertools

import pytest
import torch

from pipeline import backends, dali, loader as data
from pipeline.augment import AugSpec
from pipeline.cpu import ReadSpec
from tests.shardkit import make_digit_shards

SPEC = ReadSpec(AugSpec(size=28, crop="none", flip=False, channels=1), train=True, batch_size=4)


def test_backends_declare_what_the_loader_asks():
    assert [(b.streams, b.fixed_split) for b in (backends.CpuBackend(SPEC, 10, 3, 0),
                                                   backends.DaliBackend(SPEC, 10, 3, 0),
                                                   backends.SyntheticBackend(SPEC, 10))] == \
        [(3, False), (1, True), (1, False)]
    urls = [f"d-{i:03d}.tar" for i in range(6)]
    cpu, fixed = (data.Loader(urls, SPEC, 10, workers=0, noise=None, backend=b) for b in ("cpu", "dali"))
    assert cpu.shard_order(1) != cpu.shard_order(0)               # re-split every epoch
    assert fixed.shard_order(1) == fixed.shard_order(0)           # epoch 0's split, every epoch


def test_synthetic_backend_feeds_the_loader():
    ld = data.Loader(["x-000.tar"], SPEC, 10, workers=0, noise=None, backend="synthetic")
    batches = list(itertools.islice(ld(0), 3))
    assert [len(b) for b in batches] == [4, 4, 4] and batches[0].images.dtype == torch.uint8
    assert batches[-1].position == {0: 3} and int(batches[0].labels.max()) < 10
    b = backends.synthetic_batch(SPEC, 10, "cpu", (0.5,), (0.5,), channels_last=False)
    assert b.images.shape == (4, 1, 28, 28) and b.images.dtype == torch.float32 and b.images.abs().max() <= 1


@pytest.mark.skipif(not dali.dali_available(), reason="NVIDIA DALI is not installed: pip install '.[dali]'")
def test_dali_backend_refuses_shards_it_was_not_built_over(tmp_path):
    out = make_digit_shards(tmp_path, n_train=72, n_test=10, shard_size=24)
    urls = data.resolve([str(out)]).urls["train"]
    b = backends.DaliBackend(ReadSpec(AugSpec(size=28, crop="none", flip=False, channels=1), train=False,
                                      batch_size=64), 10, 1, 0)
    n = sum(len(t.labels) for t in b(0, urls[:2], None, None, {}))
    assert n > 0 and sum(len(t.labels) for t in b(1, urls[:2], None, None, {})) == n
    with pytest.raises(ValueError, match="fixed"):
        b(2, urls[1:3], None, None, {})
