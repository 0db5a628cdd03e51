"""tools/bench_stages.py (bench_pipeline --stages): the stage clock's arithmetic, and that timing
the CPU backend's stages changes neither its batches nor the functions it wraps; bench_pipeline's
repeated set (distinct samples, not a shard listed twice). No timing is asserted."""
import os
from types import SimpleNamespace

import pytest
import torch

from pipeline import cpu, loader
from tools import bench_pipeline, bench_stages, synth_images
from tools.bench_shards import shard


def fake_clock():
    ticks = iter(range(1000))
    return lambda: float(next(ticks))


def test_a_stage_excludes_the_stages_it_calls():
    clock = bench_stages.Clock(fake_clock())
    with clock.stage("outer"):              # 0
        with clock.stage("inner"):          # 1 .. 2
            pass
        with clock.stage("inner"):          # 3 .. 4
            pass
    assert dict(clock.seconds) == {"inner": 2.0, "outer": 3.0}      # outer: 5 - 0 - 2


def test_a_generator_stage_counts_its_own_work_not_its_consumers():
    now = fake_clock()
    clock = bench_stages.Clock(now)

    def produce():
        yield from (1, 2)
    got = []
    for x in clock.wrap("gen", produce, generator=True)():
        now(), now()                        # the consumer's work, outside the stage
        got.append(x)
    assert got == [1, 2] and dict(clock.seconds) == {"gen": 3.0}   # 3 calls of next, 1 tick each


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    tree = synth_images.write_tree(root / "images", 12, classes=3, size=80)
    dirs = {"orig": root / "orig", "r256": root / "r64"}
    shard(tree, dirs["orig"], 0, 4, 1)
    shard(tree, dirs["r256"], 64, 4, 1)
    return tree, dirs


def stream(shard_dir):
    ds = loader.resolve([str(shard_dir)])
    spec = cpu.ReadSpec(loader.spec_from_card(ds.card, 32), train=True, batch_size=4)
    return cpu.ShardStream(ds.urls["train"], spec, len(ds.classes), epoch=1)


def test_timing_the_stages_changes_no_batch_and_restores_the_functions(tiny_set):
    _, dirs = tiny_set
    plain = list(stream(dirs["orig"]))
    before = [getattr(mod, name) for mod, name, _, _ in bench_stages.B_CALLS]
    clock = bench_stages.Clock()
    with bench_stages.instrumented(clock):
        timed = list(stream(dirs["orig"]))
    assert [getattr(mod, name) for mod, name, _, _ in bench_stages.B_CALLS] == before
    assert len(timed) == len(plain) and sum(len(t.labels) for t in timed) == 12
    for p, t in zip(plain, timed):
        assert torch.equal(p.images, t.images) and torch.equal(p.labels, t.labels) and torch.equal(p.index, t.index)
    assert set(clock.seconds) == set(bench_stages.STAGES) - {"hand-over"}   # every wrapped stage ran
    assert all(s > 0 for s in clock.seconds.values())


def test_the_profile_covers_every_loader_over_the_same_images(tiny_set):
    tree, dirs = tiny_set
    args = SimpleNamespace(image_size=32, batch_size=4, repeats=1, workers=2)
    res = bench_stages.profile(tree, dirs, args, log=lambda s: None)
    assert set(res) == {"a", "b", "b_r256"} and {r["n"] for r in res.values()} == {12}
    assert res["a"]["a_over_this"] == 1.0
    for row in res.values():
        assert row["total"] > 0 and all(row[s] >= 0 for s in bench_stages.STAGES)


def test_a_repeated_set_holds_each_image_as_distinct_hard_linked_samples(tmp_path):
    tree = synth_images.write_tree(tmp_path / "images-4", 4, classes=2, size=80)
    assert bench_pipeline.copies(tree, 1) == tree
    out = bench_pipeline.copies(tree, 3)
    files = sorted(out.glob("*/*.jpg"))
    assert len(files) == 12 and {f.name[:3] for f in files} == {"r0-", "r1-", "r2-"}
    originals = {f.stat().st_ino for f in tree.glob("*/*.jpg")}
    assert {f.stat().st_ino for f in files} == originals             # links, not copies
    files[0].unlink()
    assert bench_pipeline.copies(tree, 3) == out and not files[0].exists()   # cached: not remade
    assert os.path.exists(out / ".done")
