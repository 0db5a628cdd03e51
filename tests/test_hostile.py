"""Hostile data: damaged shards are skipped, counted and named, never a crash;
--max-skip-frac stops a run that loses too much; make_shards survives SIGKILL;
tools/verify_shards.py finds what is wrong. Shards come from tests/hostile.py (damaged copies
of tests/shardkit.py's small real shard sets). Hostile command lines and checkpoints:
tests/test_hostile_args.py."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import augment, dali, shards
from pipeline.convert import verify as shard_verify
from pipeline.cpu import ReadSpec, cpu_batches
from tests import hostile
from tests.shardkit import make_digit_shards
from tools import make_shards, verify_shards
from tools.rank_labels import cli as rank_cli
from train.limit import cli

ROOT = Path(__file__).resolve().parents[1]
needs_dali = pytest.mark.skipif(not dali.dali_available(),
                                reason="NVIDIA DALI is not installed: pip install '.[dali]'")


# ---------------------------------------------------------------- the readers, case by case
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """5 train shards of 24 digits (PNG), 2 val, 2 test."""
    return make_digit_shards(tmp_path_factory.mktemp("small"), n_train=150, n_test=40, shard_size=24)


THREE = ["digits-000.tar", "digits-001.tar", "digits-002.tar"]     # 72 samples


def _sample_case(kind):
    return lambda f: hostile.damage_samples(f, "digits-001.tar", {3: kind})


# case -> (damage the copied folder, samples the CPU backend reads from THREE)
CASES = {
    **{kind: (_sample_case(kind), 71) for kind in hostile.KINDS},
    "duplicate_later": (lambda f: [hostile.duplicate(f, "digits-001.tar", 2)], 72),
    "duplicate_adjacent": (lambda f: [hostile.duplicate(f, "digits-001.tar", 2, adjacent=True)], 72),
    "truncated": (lambda f: [hostile.truncate(f, "digits-001.tar", 10)], 58),
    "empty": (lambda f: [hostile.empty(f, "digits-001.tar")], 48),
    "zero_bytes": (lambda f: [hostile.empty(f, "digits-001.tar", zero_bytes=True)], 48),
    "missing": (lambda f: [hostile.remove(f, "digits-001.tar")], 48),
}
# What DALI cannot skip (it has no per-sample skip): a one-line DataError instead
DALI_RAISES = hostile.UNDECODABLE


@pytest.fixture(scope="module")
def damaged(small, tmp_path_factory):
    """case -> (folder, damages, samples the CPU backend reads): one damaged copy per case."""
    root = tmp_path_factory.mktemp("damaged")
    out = {}
    for case, (fn, n) in CASES.items():
        folder = hostile.copy_set(small, root / case)
        out[case] = (folder, fn(folder), n)
    return out


def read(fn, folder, n_classes=10, workers=0):
    spec = ReadSpec(augment.AugSpec(size=28, crop="none", flip=False, channels=1), train=False, batch_size=8)
    batches = list(fn([str(folder / s) for s in THREE], spec, n_classes, 0, workers))
    index = [i for b in batches for i in b[3].tolist()]
    return index, [tuple(r) for b in batches for r in b[4]]


@pytest.mark.parametrize("case", list(CASES))
def test_cpu_backend_skips_counts_and_names(damaged, case):
    folder, damages, n = damaged[case]
    index, records = read(cpu_batches, folder)
    assert len(index) == n and len(set(index)) == n                   # each good sample once
    for d in damages:
        assert sum(d.matches(r) for r in records) == 1, (d, records)
    assert len(records) == len(damages)                               # nothing else reported


def test_cut_off_tar_says_how_many_samples_it_gave(damaged):
    _, records = read(cpu_batches, damaged["truncated"][0])
    assert records[0][1] == "" and "after 10 samples of 24" in records[0][2]


def test_a_programming_error_in_decode_still_raises(small, monkeypatch):
    def broken(data, spec):
        raise TypeError("a bug, not a bad sample")
    monkeypatch.setattr(augment, "eval_image", broken)
    with pytest.raises(TypeError, match="a bug"):
        read(cpu_batches, small)


@needs_dali
@pytest.mark.parametrize("case", list(CASES))
def test_dali_backend_skips_what_it_can(damaged, case):
    """Missing members, bad labels, duplicates, empty and missing shards: the CPU backend's
    samples and records. Undecodable images: a one-line DataError naming the fix. Cut-off
    tars: DALI reads whole shards only, so the shard is skipped with one record."""
    folder, damages, n = damaged[case]
    if case in DALI_RAISES:
        with pytest.raises(shards.DataError, match=r"DALI failed .*--backend cpu skips") as e:
            read(dali.dali_batches, folder, workers=1)
        assert "\n" not in str(e.value)
        return
    index, records = read(dali.dali_batches, folder, workers=1)
    if case in ("truncated", "zero_bytes"):
        assert len(index) == 48 and len(records) == 1
        assert "DALI reads whole shards only" in records[0][2] and records[0][1] == ""
        return
    cpu_index, cpu_records = read(cpu_batches, folder)
    assert sorted(index) == sorted(cpu_index) and len(index) == n
    shorten = lambda rs: sorted((Path(s).name, k, r.split(":")[0]) for s, k, r in rs)  # noqa: E731
    assert shorten(records) == shorten(cpu_records)
    for d in damages:
        assert sum(d.matches(r) for r in records) == 1, (d, records)


# ---------------------------------------------------------------- training and scoring
def damage_for_done_when(folder: Path) -> list:
    """5 damaged samples and a tar cut off 3 samples before its end (8 of 1000 lost < 1%)."""
    dm = hostile.damage_samples(folder, "digits-001.tar", {5: "garbage_image", 40: "zero_byte_image"})
    dm += hostile.damage_samples(folder, "digits-003.tar", {7: "no_cls", 60: "text_cls"})
    dm += hostile.damage_samples(folder, "digits-005.tar", {99: "out_of_range_cls"})
    dm.append(hostile.truncate(folder, "digits-006.tar", 122))
    return dm


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """8 train shards of 125 (1000 samples), 2 val, 2 test."""
    return make_digit_shards(tmp_path_factory.mktemp("digits"), n_train=1250, n_test=250, shard_size=125)


@pytest.fixture(scope="module")
def hostile_set(digits, tmp_path_factory):
    folder = hostile.copy_set(digits, tmp_path_factory.mktemp("hostile") / "shards")
    return folder, damage_for_done_when(folder)


def error_lines(capsys) -> list[str]:
    """stderr lines of the run, the progress bar's left out (tqdm draws on stderr)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    bar = re.compile(r"\|\s*\d+/\d+ \[")                  # "epoch 0:  12%|█▎  | 2/16 [00:02<..."
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not bar.search(ln)]


def train(data_arg, out, *extra):
    return cli(["--data", str(data_arg), "--model", "mnist_cnn", "--epochs", "1", "--batch-size", "64",
                "--workers", "0", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def hostile_run(hostile_set, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "hostile"
    assert train(hostile_set[0], out) == 0
    return out


def test_training_over_damaged_shards_finishes_and_names_every_skip(hostile_set, hostile_run):
    _, damages = hostile_set
    final = json.loads((hostile_run / "final.json").read_text())
    row = json.loads((hostile_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["samples_skipped"] == row["samples_skipped"] == 5
    assert row["samples_seen"] == 1000 - 5 - 3
    records = [json.loads(line) for line in (hostile_run / "skipped.jsonl").read_text().splitlines()]
    assert {tuple(r) for r in records} == {("shard", "key", "reason", "epoch")}
    for d in damages:
        assert sum(d.matches((r["shard"], r["key"], r["reason"])) for r in records) == 1, d
    assert len(records) == len(damages)
    cut = next(r for r in records if not r["key"])
    assert "after 122 samples of 125" in cut["reason"] and Path(cut["shard"]).name == "digits-006.tar"


def test_scoring_over_damaged_shards(hostile_run, tmp_path):
    assert rank_cli(["--run", str(hostile_run), "--out", str(tmp_path / "labels"), "--workers", "0"]) == 0
    summary = json.loads((tmp_path / "labels" / "summary.json").read_text())
    assert summary["n"] == 992 and summary["n_skipped"] == 6          # 5 samples + the cut-off tar


def test_max_skip_frac_stops_with_one_line_naming_the_worst_shards(small, tmp_path, capsys):
    """6 of 120 train samples lost (2 damaged, 4 behind a cut): over the default 1%, under 10%."""
    folder = hostile.copy_set(small, tmp_path / "shards")
    hostile.damage_samples(folder, "digits-001.tar", {3: "no_cls", 9: "garbage_image"})
    hostile.truncate(folder, "digits-003.tar", 20)
    assert train(folder, tmp_path / "strict") == 2
    err = error_lines(capsys)
    assert len(err) == 1, err
    assert "train epoch 0: 6 of 120 samples lost (5.0% > --max-skip-frac 0.01)" in err[0]
    assert ("worst shards: digits-003.tar (unreadable or cut-off tar after 20 samples of 24), "
            "digits-001.tar (2 samples skipped)") in err[0]
    assert len((tmp_path / "strict" / "skipped.jsonl").read_text().splitlines()) == 3
    assert not (tmp_path / "strict" / "final.json").exists()
    assert train(folder, tmp_path / "lenient", "--max-skip-frac", "0.1") == 0
    assert json.loads((tmp_path / "lenient" / "final.json").read_text())["samples_skipped"] == 2


def test_a_vanished_card_shard_is_an_error(digits, tmp_path, capsys):
    """A val shard the card lists is gone: exit 2 naming it (at start-up, or, without the
    start-up check, when the epoch's val pass finds a fifth of val lost)."""
    folder = hostile.copy_set(digits, tmp_path / "shards")
    hostile.remove(folder, "digits-val-001.tar")
    assert train(folder, tmp_path / "run", "--max-train-samples", "100") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "digits-val-001.tar" in err[0], err


# ---------------------------------------------------------------- make_shards under SIGKILL
KILLER = r"""
import os, signal, sys
import pipeline.convert.writer as writer
kind, n = sys.argv[1], int(sys.argv[2])
calls = [0]
def tick():
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
if kind == "member":                       # inside a tar, between two members
    real_member = writer._member
    def member(name, data):
        tick()
        return real_member(name, data)
    writer._member = member
else:                                      # just before a rename: idx, tar, manifest, card
    real_replace = os.replace
    def replace(a, b):
        tick()
        return real_replace(a, b)
    os.replace = replace
from tools import make_shards
sys.exit(make_shards.main(sys.argv[3:]))
"""


def test_make_shards_killed_at_any_moment_leaves_no_truncated_final_file(tmp_path):
    """SIGKILL inside tars and before each kind of rename; then what carries a final name is
    whole, and a re-run completes a set that verify_shards passes. (test_make_shards.py covers
    an exception mid-job and a failing worker.)"""
    from tests.shardkit import make_digit_idx
    src = make_digit_idx(tmp_path / "idx", 150, 40)        # 9 shards: 18 renames + manifest + card
    points = [("member", 2), ("member", 50), ("replace", 1), ("replace", 2), ("replace", 9),
              ("replace", 19), ("replace", 20)]
    procs = []
    for kind, n in points:
        out = tmp_path / f"{kind}{n}"
        argv = ["mnist", str(src), "--out", str(out), "--name", "digits", "--shard-size", "24"]
        procs.append((out, subprocess.Popen([sys.executable, "-c", KILLER, kind, str(n), *argv], cwd=ROOT,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    for out, p in procs:
        assert p.wait(timeout=60) == -9, p.stderr.read()
        for tar in out.glob("*.tar"):                       # whatever has a final name is whole
            res = shard_verify.read_shard(str(tar), 10)
            assert not res["problems"] and len(res["samples"]) in (24, 6, 16), tar
            assert not shard_verify.check_index(tar, res["keys"]), tar
        card = out / "digits.json"
        if card.exists():                                   # written last: the set is complete
            assert not verify_shards.verify(out, "digits")[0]
        assert make_shards.main(["mnist", str(src), "--out", str(out), "--name", "digits",
                                 "--shard-size", "24"]) == 0
        problems, summary = verify_shards.verify(out, "digits")
        assert not problems, problems


# ---------------------------------------------------------------- tools/verify_shards.py
def test_verify_shards_passes_a_good_set_with_one_line(small, capsys):
    assert verify_shards.main([str(small), "--name", "digits", "--workers", "2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "train 120, val 30, test 40" in out[0]


@pytest.mark.parametrize("case, needle", [
    ("garbage_image", "image does not decode"), ("zero_byte_image", "image does not decode"),
    ("cut_image", "image does not decode"), ("broken_png_chunk", "SyntaxError: broken PNG file"),
    ("no_cls", "no cls member"), ("no_image", "no jpg or png member"), ("text_cls", "bad cls"),
    ("out_of_range_cls", "label 13 outside [0, 10)"), ("negative_cls", "label -1 outside"),
    ("duplicate_later", "appears 2 times"), ("duplicate_adjacent", "the key is written twice"),
    ("truncated", "cut off or unreadable after 10 samples"), ("empty", "0 samples, the card says 24"),
    ("zero_bytes", "0 samples, the card says 24"), ("missing", "missing (the card lists it)"),
])
def test_verify_shards_lists_each_problem(damaged, case, needle, capsys):
    folder, damages, _ = damaged[case]
    assert verify_shards.main([str(folder), "--name", "digits", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert needle in err and damages[0].shard in err, err
    if damages[0].key:
        assert damages[0].key in err
    if case in ("truncated", "missing", "empty"):
        assert "in no tar" in err and "samples in the tars" in err    # manifest and class counts


def test_verify_shards_checks_manifest_card_and_leftovers(small, tmp_path, capsys):
    import pyarrow.parquet as pq
    folder = hostile.copy_set(small, tmp_path / "s")
    t = pq.read_table(folder / "digits.parquet")
    labels = t.column("label").to_pylist()
    labels[0] = (labels[0] + 1) % 10                       # the manifest disagrees on one label
    pq.write_table(t.set_column(t.schema.get_field_index("label"), "label", [labels]), folder / "digits.parquet")
    card = json.loads((folder / "digits.json").read_text())
    card["splits"]["val"]["count"] += 1
    (folder / "digits.json").write_text(json.dumps(card))
    (folder / "digits-005.tar").write_bytes((folder / "digits-000.tar").read_bytes())
    (folder / "digits-002.tar.tmp").write_bytes(b"")
    assert verify_shards.main([str(folder), "--name", "digits", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    for needle in ("the manifest ('train'", "card: split val says 31 samples", "digits-005.tar: a shard the card does not list",
                   "digits-002.tar.tmp: an unfinished file", "in the tars,"):
        assert needle in err, (needle, err)


def test_verify_shards_without_a_card(tmp_path, capsys):
    assert verify_shards.main([str(tmp_path), "--name", "digits"]) == 1
    assert "dataset card not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        verify_shards.main([str(tmp_path / "nope"), "--name", "digits"])
    assert e.value.code == 2
