"""tools/synth_clothing.py (a Clothing1M-shaped source) and bench_scale's exponent fit."""
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.convert import sources as shard_sources
from tools import bench_scale, make_shards, synth_clothing as sc

REPO = Path(__file__).resolve().parent.parent
TXT = ["noisy_label_kv.txt", "clean_label_kv.txt", "clean_train_key_list.txt", "clean_val_key_list.txt",
       "clean_test_key_list.txt", "noisy_train_key_list.txt", "category_names_eng.txt"]


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def synth(out: Path, n: int, *extra: str) -> None:
    assert sc.main([str(out), "--n", str(n), *extra]) == 0


def test_layout_parses_as_clothing1m(tmp_path):
    out = tmp_path / "c1m"
    synth(out, 60, "--annotations", "--size", "40:70")
    assert sorted(p.name for p in (out / "annotations").iterdir()) == sorted(TXT)
    assert (out / "annotations/category_names_eng.txt").read_text().split("\n")[:14] == sc.CLASSES
    src = shard_sources.clothing1m(out, 0.0, 0)        # the converter's own reader
    c = sc.split_counts(60)
    assert len(src.splits["train"]) == c["noisy_only"] + c["both"]
    assert (len(src.splits["val"]), len(src.splits["test"])) == (c["val"], c["test"])
    shard_sources.check_unique_keys(src)
    shard_sources.check_labels(src)
    paths = [Path(s) for recs in src.splits.values() for *_, s in recs]
    assert all(p.parent.parent.parent.name == "images" for p in paths)    # images/D/DD/x.jpg
    for p in paths[:10]:
        img = Image.open(p)
        assert img.format == "JPEG" and all(40 <= v <= 70 for v in img.size)
        assert np.asarray(img).std() > 10                                 # a pattern, not a flat colour


def test_same_bytes_for_any_workers(tmp_path):
    synth(tmp_path / "k1", 150, "--workers", "1", "--seed", "3")
    synth(tmp_path / "k2", 150, "--workers", "2", "--seed", "3")
    a, b = tree(tmp_path / "k1"), tree(tmp_path / "k2")
    assert a == b and len([k for k in a if k.endswith(".jpg")]) == 150
    synth(tmp_path / "other", 150, "--seed", "4")
    assert tree(tmp_path / "other") != a


def test_noise_rate_is_about_38_percent():
    t = sc.label_tables(30000, seed=0)
    train = np.isin(t["role"], (sc.ROLE_NOISY, sc.ROLE_BOTH))
    wrong = (t["noisy"][train] != t["true"][train]).mean()
    assert 0.36 < wrong < 0.40
    counts = sc.split_counts(30000)
    assert np.bincount(t["role"], minlength=5).tolist() == [
        counts["noisy_only"], counts["both"], counts["clean_train_only"], counts["val"], counts["test"]]
    assert counts["val"] >= 400 and counts["test"] >= 300


def test_labels_of_an_index_do_not_depend_on_n():
    small, large = sc.label_tables(1000, 5), sc.label_tables(100_000, 5)
    assert (small["true"] == large["true"][:1000]).all() and (small["noisy"] == large["noisy"][:1000]).all()


def test_confusion_is_class_dependent():
    t = sc.label_tables(60000, seed=1)
    conf = np.zeros((sc.K, sc.K))
    np.add.at(conf, (t["true"], t["noisy"]), 1)
    rate = conf / conf.sum(1, keepdims=True)
    off = rate[~np.eye(sc.K, dtype=bool)]
    for a, b in sc.STRONG:          # Knitwear/Sweater, Jacket/Windbreaker, Shirt/T-Shirt
        i, j = sc.CLASSES.index(a), sc.CLASSES.index(b)
        assert min(rate[i, j], rate[j, i]) > 5 * off.mean()   # mean: 0.38 / 13
    top = sorted(off)[-6:]          # the three strong pairs, both directions
    assert min(top) > 5 * np.median(off)


def test_rerun_after_damage_finishes_and_matches(tmp_path):
    ref, hurt = tmp_path / "ref", tmp_path / "hurt"
    synth(ref, 80)
    synth(hurt, 80)
    (hurt / sc.rel_path(3)).unlink()                                       # never written
    p = hurt / sc.rel_path(7)
    p.write_bytes(p.read_bytes()[:100])                                    # truncated by someone else
    stale = hurt / sc.rel_path(11)
    (stale.parent / f".{stale.name}.k1ll3d.tmp").write_bytes(b"half")      # a kill before the rename
    (hurt / sc.rel_path(11)).unlink()
    (hurt / "noisy_label_kv.txt").unlink()
    synth(hurt, 80)
    assert tree(hurt) == tree(ref)


def test_rerun_after_sigkill_matches(tmp_path):
    n, ref, out = 1500, tmp_path / "ref", tmp_path / "out"
    synth(ref, n, "--workers", "2")
    cmd = [sys.executable, str(REPO / "tools/synth_clothing.py"), str(out), "--n", str(n), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("images/*/*/*.jpg"))) < 200:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)                                    # main and its workers
    proc.wait()
    assert not (out / "noisy_label_kv.txt").exists()                       # lists come last
    assert subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                          capture_output=True).returncode == 0
    assert tree(out) == tree(ref)


def test_rerun_with_other_options_refuses(tmp_path, capsys):
    synth(tmp_path / "c", 40)
    assert sc.main([str(tmp_path / "c"), "--n", "41"]) == 2
    assert "holds a source made with" in capsys.readouterr().err


def test_make_shards_round_trip(tmp_path):
    src, out = tmp_path / "c1m", tmp_path / "shards"
    synth(src, 120, "--annotations")
    assert make_shards.main(["clothing1m", str(src), "--out", str(out), "--name", "c1m", "--shard-size", "40"]) == 0
    t, c = sc.label_tables(120), sc.split_counts(120)
    rows = pq.read_table(out / "c1m.parquet").to_pylist()
    assert len(rows) == 120 - c["clean_train_only"]
    for r in rows:
        i = int(Path(r["source"]).stem)
        role = t["role"][i]
        if r["split"] == "train":
            assert r["label"] == t["noisy"][i]
            assert r["clean_label"] == (t["true"][i] if role == sc.ROLE_BOTH else -1)
        else:
            assert r["label"] == r["clean_label"] == t["true"][i]
            assert role == (sc.ROLE_VAL if r["split"] == "val" else sc.ROLE_TEST)
        assert Image.open(io.BytesIO(Path(r["source"]).read_bytes())).format == "JPEG"


def test_exponent_fit():
    ns = [1e4, 1e5, 1e6]
    assert bench_scale.fit_exponent(ns, [2 * n ** 1.0 for n in ns]) == pytest.approx(1.0)
    assert bench_scale.fit_exponent(ns, [0.5 * n ** 1.3 for n in ns]) == pytest.approx(1.3)
    noisy = [3.0 * n * f for n, f in zip(ns, (1.1, 0.9, 1.05))]
    assert 0.95 < bench_scale.fit_exponent(ns, noisy) < 1.05
    assert bench_scale.fit_exponent([1e4], [3.0]) is None                  # one size: no line
    assert bench_scale.fit_exponent([1e4, 1e4], [3.0, 4.0]) is None


def test_time_v_parsing():
    text = ("\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02.50\n"
            "\tMaximum resident set size (kbytes): 204800\n")
    assert bench_scale.parse_time_v(text) == {"peak_rss_mb": 200.0, "time_wall_s": 62.5}


def test_marginal_cost_takes_out_fixed_startup():
    rows = [{"stage": "s", "rc": 0, "items": n, "n": n, "wall_s": 10 + 0.001 * n} for n in (1e4, 1e5)]
    assert bench_scale.marginal_cost(rows)["s"] == pytest.approx(0.001)
    assert bench_scale.exponents(rows)["s"] < 1                            # the fixed 10 s bends k


def test_links_planted_in_out_are_replaced_never_written_through(tmp_path, capsys):
    """A shared OUT holding links at an image, a list and a temporary-looking name: each output
    is renamed over its link, no target changes; OUT itself a link is refused with one line."""
    target = tmp_path / "bashrc"
    target.write_text("keep me\n")
    out = tmp_path / "c"
    (out / "images" / "0" / "00").mkdir(parents=True)
    planted = [out / sc.rel_path(0), out / "noisy_label_kv.txt", out / "category_names_eng.txt.part"]
    for p in planted:
        p.symlink_to(target)
    synth(out, 40)
    assert target.read_text() == "keep me\n"
    assert not (out / sc.rel_path(0)).is_symlink() and not (out / "noisy_label_kv.txt").is_symlink()
    (tmp_path / "link").symlink_to(out)
    assert sc.main([str(tmp_path / "link"), "--n", "40"]) == 2
    assert "link" in capsys.readouterr().err
