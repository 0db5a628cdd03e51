"""The CPU shard pipeline: shard lists, noise tables, exactly-once reading, subsets."""
import io
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from pipeline import loader as data
from pipeline import shards
from pipeline.noise import NoiseSpec, NoiseTable, parse_noise, transition_matrix
from pipeline.tario import iter_tar
from tests.shardkit import make_digit_shards


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("digits"))


def read_epoch(ds, split="train", workers=2, batch_size=32, epoch=0, noise="none", keep=None, seed=0):
    aug = data.spec_from_card(ds.card)
    loaders = data.build_loaders(ds, aug, batch_size=batch_size, workers=workers, seed=seed,
                                 noise=data.noise_table(ds, noise, "", 0), keep=keep)
    batches = list(loaders[split](epoch))
    cat = lambda f: torch.cat([getattr(b, f) for b in batches])  # noqa: E731
    return batches, cat("index"), cat("labels"), cat("clean")


def test_expand_brace_angle_folder_and_errors(digit_shards):
    brace = shards.expand(str(digit_shards / "digits-{000..004}.tar"))
    angle = shards.expand(str(digit_shards / "digits-<000..004>.tar"))
    assert brace == angle and len(brace) == 5
    assert shards.expand(str(digit_shards)) == brace            # a folder means its card's train split
    with pytest.raises(shards.DataError, match="shard not found"):
        shards.expand(str(digit_shards / "digits-{000..099}.tar"))
    assert shards.expand("pipe:cat x-{0..1}.tar") == ["pipe:cat x-0.tar", "pipe:cat x-1.tar"]


def test_every_sample_exactly_once_with_workers(digit_shards):
    ds = data.resolve([str(digit_shards / "digits-{000..004}.tar")])
    n = ds.card["splits"]["train"]["count"]
    for workers in (0, 2, 3):
        batches, index, labels, clean = read_epoch(ds, workers=workers)
        assert len(index) == n and len(set(index.tolist())) == n
        assert all(b.images.dtype == torch.uint8 and b.images.shape[1:] == (1, 28, 28) for b in batches if len(b))
        assert torch.equal(labels, clean)                        # no noise: given == clean
    for split in ("val", "test"):
        _, index, _, _ = read_epoch(ds, split)
        assert len(set(index.tolist())) == ds.card["splits"][split]["count"] == len(index)


def test_epochs_shuffle_differently_but_reproducibly(digit_shards):
    ds = data.resolve([str(digit_shards)])
    a = read_epoch(ds, epoch=0)[1]
    assert torch.equal(a, read_epoch(ds, epoch=0)[1])
    assert not torch.equal(a, read_epoch(ds, epoch=1)[1])
    assert sorted(a.tolist()) == sorted(read_epoch(ds, epoch=1)[1].tolist())


def test_noise_is_a_function_of_index(digit_shards):
    ds = data.resolve([str(digit_shards)])
    runs = [read_epoch(ds, workers=w, batch_size=b, epoch=e, noise="uniform:0.6") for w, b, e in ((0, 7, 0), (2, 32, 3))]
    given = [dict(zip(r[1].tolist(), r[2].tolist())) for r in runs]
    assert given[0] == given[1]
    _, _, labels, clean = runs[0]
    assert 0.45 < (labels != clean).float().mean() < 0.75
    _, _, tl, tc = read_epoch(ds, "test", noise="uniform:0.6")
    assert torch.equal(tl, tc)                                   # never noise on test


def test_uniform_noise_rate_and_targets():
    classes = [str(i) for i in range(10)]
    table = NoiseTable(transition_matrix(NoiseSpec("uniform", 0.8), classes), 200_000, seed=3)
    clean = torch.arange(200_000) % 10
    given = table.apply(clean, torch.arange(200_000))
    flipped = given != clean
    assert abs(flipped.float().mean().item() - 0.8) < 0.005
    counts = Counter(((given[flipped] - clean[flipped]) % 10).tolist())
    assert set(counts) == set(range(1, 10))                       # only *other* classes
    assert max(counts.values()) / min(counts.values()) < 1.1     # uniformly
    again = NoiseTable(transition_matrix(NoiseSpec("uniform", 0.8), classes), 200_000, seed=3)
    assert torch.equal(again.apply(clean, torch.arange(200_000)), given)
    other = NoiseTable(transition_matrix(NoiseSpec("uniform", 0.8), classes), 200_000, seed=4)
    assert not torch.equal(other.apply(clean, torch.arange(200_000)), given)


def test_pair_and_matrix_noise(tmp_path):
    cifar = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    t = transition_matrix(NoiseSpec("pair", 0.4), cifar)
    assert t[9, 1] == pytest.approx(0.4) and t[3, 5] == pytest.approx(0.4) and t[0, 0] == 1
    clean = torch.full((50_000,), 3)
    given = NoiseTable(t, 50_000, 0).apply(clean, torch.arange(50_000))
    assert set(given.tolist()) == {3, 5} and abs((given == 5).float().mean().item() - 0.4) < 0.01
    t2 = transition_matrix(NoiseSpec("pair", 0.3), ["a", "b", "c"], "a>c")
    assert t2[0, 2] == pytest.approx(0.3) and t2[1, 1] == 1
    m = np.array([[0.5, 0.5], [0.1, 0.9]])
    np.savetxt(tmp_path / "t.txt", m)
    assert np.allclose(transition_matrix(parse_noise(f"matrix:{tmp_path}/t.txt"), ["x", "y"]), m)
    for bad in ("uniform:1.5", "uniform:x", "gauss:0.1", "uniform"):
        with pytest.raises(shards.DataError):
            parse_noise(bad)
    with pytest.raises(shards.DataError, match="no class named"):
        transition_matrix(NoiseSpec("pair", 0.3), ["a", "b"], "a>z")
    np.savetxt(tmp_path / "bad.txt", np.ones((2, 2)))
    with pytest.raises(shards.DataError, match="row-stochastic"):
        transition_matrix(parse_noise(f"matrix:{tmp_path}/bad.txt"), ["x", "y"])


def test_subset_is_seeded_and_read_exactly(digit_shards):
    ds = data.resolve([str(digit_shards)])
    select = data.selection(ds, 100, seed=5)
    keep = select.mask(0)
    assert keep.sum() == 100 and np.array_equal(keep, data.selection(ds, 100, seed=5).mask(0))
    _, index, _, _ = read_epoch(ds, keep=select)
    assert sorted(index.tolist()) == np.flatnonzero(keep).tolist()
    with pytest.raises(shards.DataError, match="exceeds"):
        data.selection(ds, 10**6, seed=0)


def test_tar_reader_matches_tarfile_and_detects_truncation():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for i, name in enumerate(["a.png", "deep/" * 30 + "b.cls", "ünï.json"]):
            info = tarfile.TarInfo(name)
            info.size = 300 * i
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
    raw = buf.getvalue()
    got = list(iter_tar(io.BytesIO(raw)))
    assert [n for n, _ in got] == ["a.png", "deep/" * 30 + "b.cls", "ünï.json"]
    assert [len(d) for _, d in got] == [0, 300, 600]
    with pytest.raises(EOFError):
        list(iter_tar(io.BytesIO(raw[:2000])))


def test_cache_eval_replays_the_first_pass_and_never_caches_train(digit_shards):
    ds = data.resolve([str(digit_shards)])
    aug = data.spec_from_card(ds.card)
    loaders = data.build_loaders(ds, aug, batch_size=32, workers=1, seed=0,
                                 noise=data.noise_table(ds, "uniform:0.5", "", 0), keep=None, cache_eval=True)
    val = loaders["val"]
    first = list(val(0))
    val._batches = lambda epoch: pytest.fail("a cached split was decoded again")
    again = list(val(1))
    assert len(again) == len(first) and all(a is b for a, b in zip(first, again))
    assert not loaders["train"].cache and loaders["test"].cache
    half = data.build_loaders(ds, aug, batch_size=32, workers=0, seed=0, noise=None, keep=None,
                              cache_eval=True)["test"]
    next(iter(half(0)))                  # an interrupted pass is not kept
    assert half._cached is None
