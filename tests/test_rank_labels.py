"""tools/rank_labels.py on planted label noise, its metrics against independent computations,
its files, and the learning curves every training run writes (train/report.py)."""
import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline import loader as data
from tests.shardkit import make_digit_shards
from tools import bench_rank_memory
from tools.rank_labels import cli as rank_cli
from tools.review.detection import detection_summary
from tools.review.scores import SCHEMA
from train.limit import cli as train_cli
from train.report import write_curves

SUMMARY_KEYS = {"n", "n_known", "n_wrong", "frac_wrong", "roc_auc", "average_precision", "k",
                "precision_at_k", "threshold", "method", "checkpoint", "split", "n_skipped", "device"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("digits"), n_train=1000, n_test=200)


def train(shards, out, *extra):
    argv = ["--data", str(shards / "digits-{000..007}.tar"), "--model", "mnist_cnn", "--batch-size", "64",
            "--workers", "0", "--noise", "uniform:0.3", "--out", str(out), *extra]
    assert train_cli(argv) == 0


@pytest.fixture(scope="module")
def limit_run(shards, tmp_path_factory):
    """LIMIT_L on a 600-sample subset with 30% uniform noise: flipped labels are known."""
    out = tmp_path_factory.mktemp("runs") / "limit"
    train(shards, out, "--method", "limit", "--epochs", "3", "--beta", "10",
          "--predictor-model", "mnist_cnn_bn", "--max-train-samples", "600")
    return out


@pytest.fixture(scope="module")
def ranked(limit_run):
    out = limit_run / "labels"
    assert rank_cli(["--run", str(limit_run), "--out", str(out), "--top", "25", "--workers", "0"]) == 0
    return out


def brute_auc(score, positive):
    pos, neg = score[positive][:, None], score[~positive][None, :]
    return ((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size)


def brute_ap(score, positive):
    """AP by walking every distinct threshold from the top."""
    ap, last_recall = 0.0, 0.0
    for t in np.unique(score)[::-1]:
        sel = score >= t
        tp = (sel & positive).sum()
        recall = tp / positive.sum()
        ap += (recall - last_recall) * tp / sel.sum()
        last_recall = recall
    return ap


# ---- the planted case ----

def test_flipped_labels_rank_first(ranked):
    summary = json.loads((ranked / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["n"] == 600 and summary["method"] == "predictor mae" and summary["split"] == "train"
    assert 0.2 < summary["frac_wrong"] < 0.4
    assert summary["roc_auc"] > 0.9, summary
    assert summary["precision_at_k"] > 0.7


def test_tool_metrics_equal_independent_computations(ranked):
    t = pq.read_table(ranked / "label_scores.parquet").to_pydict()
    score = np.array(t["score"], dtype=np.float64)
    wrong = np.array(t["label"]) != np.array(t["clean_label"])
    summary = json.loads((ranked / "summary.json").read_text())
    assert summary["n_wrong"] == wrong.sum()
    assert summary["roc_auc"] == pytest.approx(brute_auc(score, wrong), abs=1e-12)
    assert summary["average_precision"] == pytest.approx(brute_ap(score, wrong), abs=1e-12)
    k, rank = int(wrong.sum()), np.array(t["rank"])
    assert summary["threshold"] == pytest.approx(score[rank == k][0])
    assert summary["precision_at_k"] == pytest.approx(wrong[rank <= k].mean())


def test_parquet_schema_rows_and_given_labels(ranked, shards):
    f = pq.ParquetFile(ranked / "label_scores.parquet")
    assert f.schema_arrow.equals(SCHEMA)
    t = f.read().to_pydict()
    # the same subset and the same noisy labels the run trained on
    ds = data.resolve([str(shards / "digits-{000..007}.tar")])
    keep = data.selection(ds, 600, seed=0).mask(0)
    assert f.metadata.num_rows == 600 and sorted(t["index"]) == np.flatnonzero(keep).tolist()
    m = pq.read_table(shards / "digits.parquet", columns=["key", "shard", "index", "clean_label"]).to_pydict()
    manifest = {i: (k, s, c) for k, s, i, c in zip(m["key"], m["shard"], m["index"], m["clean_label"])}
    idx = np.array(t["index"])
    clean = np.array([manifest[i][2] for i in idx])
    noise = data.noise_table(ds, "uniform:0.3", "", 0)
    expected = noise.apply(torch.from_numpy(clean), torch.from_numpy(idx)).numpy()
    assert (np.array(t["label"]) == expected).all() and (np.array(t["clean_label"]) == clean).all()
    assert t["key"] == [manifest[i][0] for i in idx] and t["shard"] == [manifest[i][1] for i in idx]
    # ranks: a permutation, most suspicious (highest score) first
    order = np.argsort(t["rank"])
    assert sorted(t["rank"]) == list(range(1, 601))
    assert (np.diff(np.array(t["score"])[order]) <= 0).all()
    assert None not in t["predictor_pred"] and None not in t["classifier_pred"]


def test_suspect_grid_and_csv(ranked):
    with Image.open(ranked / "suspects.png") as img:
        img.load()
        assert img.width > 0 and img.height > 0
    rows = list(csv.DictReader(open(ranked / "suspects.csv")))
    assert list(rows[0]) == ["rank", "key", "index", "shard", "source", "given", "predicted", "score"]
    assert [int(r["rank"]) for r in rows] == list(range(1, 26))
    t = pq.read_table(ranked / "label_scores.parquet").to_pydict()
    key_of_rank = dict(zip(t["rank"], t["key"]))
    assert [r["key"] for r in rows] == [key_of_rank[k] for k in range(1, 26)]


def test_curves_and_summary_csv_after_training(limit_run):
    with Image.open(limit_run / "curves.png") as img:
        img.load()
        assert img.width > 0
    rows = list(csv.DictReader(open(limit_run / "summary.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert list(rows[0])[:4] == ["epoch", "train_loss", "train_acc", "train_acc_clean"]
    assert "lr" in rows[0] and "test_acc" in rows[0]


def test_ce_run_on_the_val_split(shards, tmp_path):
    train(shards, tmp_path / "ce", "--epochs", "1")
    out = tmp_path / "ce_labels"
    assert rank_cli(["--run", str(tmp_path / "ce"), "--split", "val", "--checkpoint", "last",
                     "--out", str(out), "--workers", "0", "--batch-size", "32"]) == 0
    t = pq.read_table(out / "label_scores.parquet")
    card = json.loads((shards / "digits.json").read_text())
    assert t.num_rows == card["splits"]["val"]["count"]
    assert t.column("predictor_pred").null_count == t.num_rows
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "classifier mse" and summary["checkpoint"].endswith("last")
    wrong = np.array(t.column("label")) != np.array(t.column("clean_label"))
    score = t.column("score").to_numpy().astype(np.float64)
    assert summary["roc_auc"] == pytest.approx(brute_auc(score, wrong), abs=1e-12)
    assert not (out / "suspects.csv").exists() and (out / "suspects.png").stat().st_size > 0


# ---- metrics and the writer path alone ----

@pytest.mark.parametrize("seed", range(5))
def test_metrics_with_ties_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = 300
    given = rng.integers(0, 5, n)
    clean = np.where(rng.random(n) < 0.6, given, rng.integers(0, 5, n))
    score = rng.integers(0, 8, n).astype(np.float32)        # few values: many ties
    known = rng.random(n) < 0.9
    clean = np.where(known, clean, -1)
    out = detection_summary(score, given, clean)
    wrong = (given != clean)[known]
    assert out["n_known"] == known.sum() and out["n_wrong"] == wrong.sum()
    assert out["roc_auc"] == pytest.approx(brute_auc(score[known], wrong), abs=1e-12)
    assert out["average_precision"] == pytest.approx(brute_ap(score[known], wrong), abs=1e-12)


def test_metrics_without_wrong_or_clean_labels():
    s = np.array([0.1, 0.5, 0.3], dtype=np.float32)
    none_wrong = detection_summary(s, np.array([1, 2, 3]), np.array([1, 2, 3]))
    assert none_wrong["n_wrong"] == 0 and none_wrong["roc_auc"] is None and none_wrong["threshold"] is None
    unknown = detection_summary(s, np.array([1, 2, 3]), np.array([-1, -1, -1]))
    assert unknown["n_known"] == 0 and unknown["frac_wrong"] is None and unknown["roc_auc"] is None


def test_writer_path_on_a_synthetic_stream(tmp_path):
    res = bench_rank_memory.run(20_000, 1024, tmp_path)
    assert res["rows"] == 20_000 and res["roc_auc"] > 0.95
    t = pq.read_table(tmp_path / "label_scores.parquet", columns=["index", "rank", "key"])
    assert t.column("index").to_pylist() == list(range(20_000))         # manifest order
    assert sorted(t.column("rank").to_pylist()) == list(range(1, 20_001))
    assert t.column("key")[7].as_py() == "sample_00000007"
    assert pq.ParquetFile(tmp_path / "label_scores.parquet").schema_arrow.equals(SCHEMA)


def test_write_curves_without_metrics(tmp_path):
    assert write_curves(tmp_path) is None and not (tmp_path / "curves.png").exists()


# ---- one-line errors ----

def test_missing_run_or_checkpoint_exit_2(limit_run, tmp_path, capsys):
    assert rank_cli(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert rank_cli(["--run", str(limit_run), "--checkpoint", str(tmp_path / "nockpt"),
                     "--out", str(tmp_path / "o")]) == 2
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((limit_run / "config.json").read_text())
    assert rank_cli(["--run", str(bare), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("rank_labels: error:") for line in err)
    assert "no config.json" in err[0] and "no checkpoint" in err[1] and "no checkpoint" in err[2]


def test_summary_holds_the_noise_transition_matrix(ranked):
    """30% uniform noise, a 3-epoch predictor: the estimate (given label against the
    predictor's) is within 0.05 of the true matrix entry by entry on average; the true
    matrix, from the clean labels, shows the planted 30%."""
    m = json.loads((ranked / "summary.json").read_text())["noise_matrix"]
    est, true = np.array(m["estimated"], dtype=float), np.array(m["true"], dtype=float)
    assert est.shape == true.shape == (10, 10) and m["proxy"] == "predictor" and m["n_known"] == 600
    assert m["mae"] < 0.05, m["mae"]
    assert abs(np.nanmean(np.array(m["true_noise_rate"], dtype=float)) - 0.3) < 0.05


def test_a_softreg_run_is_scored_as_its_registry_entry_says(shards, tmp_path):
    """softreg has a second network (its auxiliary r) but its registry entry scores by the
    classifier with the L2 norm: the scores are ||onehot(y) - softmax(classifier(x))||_2 of the
    checkpoint, recomputed here batch by batch, and no predictor column is filled in."""
    from argparse import Namespace
    from tools.review.ranking import build_loader, load_model, load_run
    from tools.review.scores import label_scores
    from pipeline.batch import to_device
    from pipeline.shards import Part
    run = tmp_path / "softreg"
    # its config.json holds --predictor-loss's default, mae (typed, the flag is LIMIT's and refused)
    train(shards, run, "--method", "softreg", "--epochs", "1", "--max-train-samples", "300")
    out = run / "labels"
    assert rank_cli(["--run", str(run), "--out", str(out), "--checkpoint", "last", "--workers", "0"]) == 0
    assert json.loads((out / "summary.json").read_text())["method"] == "classifier mse"
    got = pq.read_table(out / "label_scores.parquet").to_pydict()
    assert all(p is None for p in got["predictor_pred"])
    args = Namespace(run=str(run), checkpoint="last", data=None, trust_urls=False, split="train",
                     batch_size=0, workers=0)
    cfg, ckpt = load_run(args)
    ds, aug, ld, _ = build_loader(cfg, args, Part(0, 1))
    model = load_model(cfg, ckpt, len(ds.classes), aug.channels)
    norm = (tuple(ds.card["normalize"]["mean"]), tuple(ds.card["normalize"]["std"]))
    want = {}
    with torch.no_grad():
        for batch in ld(0):
            if len(batch) == 0 or getattr(batch, "pad", False):
                continue
            b = to_device(batch, torch.device("cpu"), *norm, False)
            s = label_scores(model.classifier(b.images), b.labels, "mse")
            want.update(zip(batch.index.tolist(), s.tolist()))
    score = dict(zip(got["index"], got["score"]))
    assert score.keys() == want.keys()
    np.testing.assert_allclose([score[i] for i in want], list(want.values()), rtol=1e-4, atol=1e-5)
