"""tools/predict.py (issue 28 item 4): predictions on a test split with the evaluation report,
on a folder of image files, the numbers against independent computations, and the timm
export loaded by plain timm giving the same predictions."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import timm
import torch
from PIL import Image

from tests.shardkit import digits, make_digit_shards, train_argv
from tools.predict import cli as predict_cli
from train.limit import cli as train_cli
from train.predict import evaluation


def columns(path) -> dict:
    """A Parquet file as {column: numpy array} (pandas is not a dependency)."""
    t = pq.read_table(path)
    return {c: np.asarray(t.column(c).to_pylist()) for c in t.column_names} | {"_names": t.column_names}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("digits"), n_train=500, n_test=200)


@pytest.fixture(scope="module")
def cnn_run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "cnn"
    assert train_cli(train_argv(shards, out, "--noise", "uniform:0.3")) == 0
    return out


@pytest.fixture(scope="module")
def resnet_run(shards, tmp_path_factory):
    """A timm model (resnet18) on 28 px greyscale digits: one short epoch is enough to export."""
    out = tmp_path_factory.mktemp("runs") / "resnet"
    argv = train_argv(shards, out, "--max-train-samples", "128")
    argv[argv.index("mnist_cnn")] = "resnet18"
    assert train_cli(argv) == 0
    return out


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """12 greyscale 28x28 PNGs (the model's input size: no resize on either side) and a damaged one."""
    folder = tmp_path_factory.mktemp("pngs")
    x, _ = digits(12, seed=7)
    for i, img in enumerate(x):
        Image.fromarray(img, "L").save(folder / f"d{i:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_test_split_predictions_and_report(cnn_run, shards, tmp_path, capsys):
    out = tmp_path / "pred"
    assert predict_cli([str(cnn_run), "--data", str(shards), "--split", "test", "--top-k", "3",
                        "--workers", "0", "--out", str(out)]) == 0
    t = columns(out / "predictions.parquet")
    assert len(t["key"]) == 200 and t["_names"][:5] == ["key", "shard", "index", "label", "clean_label"]
    assert {"pred1", "name1", "prob1", "pred3", "name3", "prob3"} <= set(t)
    assert (t["prob1"] >= t["prob2"]).all() and (t["prob2"] >= t["prob3"]).all()
    assert (t["prob1"] + t["prob2"] + t["prob3"] <= 1 + 1e-5).all()
    csv = (out / "predictions.csv").read_text().splitlines()
    assert len(csv) == 201 and csv[0].startswith('"key","shard","index"')
    report = json.loads((out / "report.json").read_text())
    # the report's accuracy is the run's own test accuracy for the same (best) checkpoint
    final = json.loads((cnn_run / "final.json").read_text())
    assert report["accuracy"] == pytest.approx(final["test_acc"], abs=1e-9)
    assert report["accuracy"] == pytest.approx(float((t["pred1"] == t["label"]).mean()))
    assert report["accuracy_clean"] == report["accuracy"]          # a test split: clean given labels
    assert report["n"] == 200 and np.asarray(report["confusion"]).sum() == 200
    for name in ("confusion.csv", "confusion.png", "reliability.png", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert "accuracy" in capsys.readouterr().out


def test_image_folder_predictions_name_a_damaged_file(cnn_run, digit_pngs, tmp_path):
    out = tmp_path / "img"
    assert predict_cli([str(cnn_run), "--images", str(digit_pngs), "--workers", "0", "--out", str(out)]) == 0
    t = pq.read_table(out / "predictions.parquet")
    assert t.column_names[:2] == ["path", "index"] and t.num_rows == 12
    assert not (out / "report.json").exists()                       # no labels, no report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == 1 and summary["skipped_records"][0][0].endswith("broken.png")


@pytest.fixture(scope="module")
def odd_shards(tmp_path_factory):
    """A test split of 151 samples in 3 shards (60, 60, 31): 2 processes read 2 shards and 1,
    and neither the samples nor the shards divide by 2."""
    return make_digit_shards(tmp_path_factory.mktemp("odd"), n_train=100, n_test=151, shard_size=60)


LAUNCHER = os.path.join(os.path.dirname(sys.executable), "accelerate")


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
                    reason="accelerate's launcher is not installed beside this python")
@pytest.mark.parametrize("source", ["data", "images"])
def test_two_processes_predict_what_one_does(cnn_run, odd_shards, digit_pngs, tmp_path, source):
    """`accelerate launch --num_processes 2` (gloo on the CPU, as tests/test_ddp.py runs DDP):
    each process reads its share (shards round-robin, image files every 2nd), the main one
    gathers and writes; the table equals one process's, row for row, none lost or doubled."""
    args = (["--data", str(odd_shards), "--split", "test"] if source == "data"
            else ["--images", str(digit_pngs)])                  # 12 readable files and a damaged one
    one, two = tmp_path / "one", tmp_path / "two"
    assert predict_cli([str(cnn_run), *args, "--workers", "2", "--top-k", "3", "--out", str(one)]) == 0
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    # --multi_gpu with ACCELERATE_USE_CPU: `--cpu --num_processes 2` alone starts one process
    cmd = [LAUNCHER, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--dynamo_backend", "no", "--mixed_precision", "no", "tools/predict.py", str(cnn_run), *args,
           "--workers", "0", "--top-k", "3", "--out", str(two)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["skipped"] == json.loads((one / "summary.json").read_text())["skipped"]
    a, b = columns(one / "predictions.parquet"), columns(two / "predictions.parquet")
    assert a["_names"] == b["_names"]
    n = 151 if source == "data" else 12
    assert len(b["index"]) == len(set(b["index"])) == n
    for c in a["_names"]:
        if c.startswith("prob"):
            np.testing.assert_allclose(b[c], a[c], rtol=0, atol=1e-6)
        else:
            assert (a[c] == b[c]).all(), c
    assert (two / "predictions.csv").read_text().count("\n") == n + 1
    if source == "data":
        assert json.loads((two / "report.json").read_text())["accuracy"] == pytest.approx(
            json.loads((one / "report.json").read_text())["accuracy"], abs=1e-12)


def test_export_loads_in_plain_timm_with_the_same_predictions(resnet_run, digit_pngs, tmp_path):
    out, exp = tmp_path / "pred", tmp_path / "export"
    files = sorted(digit_pngs.glob("d*.png"))
    assert predict_cli([str(resnet_run), "--images", *map(str, files), "--workers", "0", "--out", str(out),
                        "--top-k", "10", "--export", str(exp)]) == 0
    ours = columns(out / "predictions.parquet")
    probs = np.zeros((len(files), 10))
    for j in range(1, 11):
        probs[np.arange(len(files)), ours[f"pred{j}"]] = ours[f"prob{j}"]
    cfg = json.loads((exp / "config.json").read_text())
    assert cfg["architecture"] == "resnet18" and cfg["num_classes"] == 10 and len(cfg["label_names"]) == 10
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [1, 28, 28] and "license" not in pc and "tag" not in pc
    # plain timm, two ways, with timm's own preprocessing from the exported config
    by_dir = timm.create_model(f"local-dir:{exp}", pretrained=True).eval()
    by_file = timm.create_model("resnet18", pretrained=True, num_classes=10,
                                pretrained_cfg_overlay=dict(pc, file=str(exp / "model.safetensors"))).eval()
    for model in (by_dir, by_file):
        tf = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
        x = torch.stack([tf(Image.open(f)) for f in files])
        with torch.no_grad():
            p = model(x).softmax(1).numpy()
        np.testing.assert_allclose(p, probs, atol=1e-5)
        assert (p.argmax(1) == ours["pred1"]).all()
    # the trap the README names: an overlay without num_classes keeps the architecture's
    # 1000-class cfg, so timm drops the file's head and leaves a random one
    lost = timm.create_model("resnet18", pretrained=True, num_classes=10, in_chans=1,
                             pretrained_cfg_overlay=dict(file=str(exp / "model.safetensors"))).eval()
    assert not torch.allclose(lost.fc.weight, by_file.fc.weight)


def test_export_refuses_a_model_timm_lacks_and_bad_flags(cnn_run, tmp_path, capsys):
    assert predict_cli([str(cnn_run), "--export", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "mnist_cnn" in err and "not by timm" in err
    assert not (tmp_path / "e").exists()
    with pytest.raises(SystemExit) as e:
        predict_cli([str(cnn_run)])
    assert e.value.code == 2
    assert predict_cli([str(tmp_path / "nothing"), "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no config.json" in capsys.readouterr().err


def brute_ece(conf, correct, bins):
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [i for i in range(len(conf)) if lo <= conf[i] < hi or (b == bins - 1 and conf[i] == 1.0)]
        if inside:
            acc = sum(correct[i] for i in inside) / len(inside)
            mean = sum(conf[i] for i in inside) / len(inside)
            total += len(inside) / len(conf) * abs(acc - mean)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_brute_force(seed):
    rng = np.random.default_rng(seed)
    k, n = 4, 300
    label = rng.integers(-1, k, n)                     # -1: a sample without a label
    clean = np.where(rng.random(n) < 0.5, label, rng.integers(0, k, n))
    prob = rng.dirichlet(np.ones(k), n)
    prob[:5, 0] = 1.0                                  # confidences of exactly 1 (the last bin's edge)
    prob[:5, 1:] = 0.0
    order = np.argsort(-prob, 1, kind="stable")
    top_class, top_prob = order[:, :2].astype(np.int32), np.take_along_axis(prob, order[:, :2], 1)
    r = evaluation.evaluate(label, clean, top_class, top_prob.astype(np.float32), list("abcd"))
    known = [i for i in range(n) if label[i] >= 0]
    pred = order[:, 0]
    assert r["n"] == len(known)
    assert r["accuracy"] == pytest.approx(sum(pred[i] == label[i] for i in known) / len(known))
    for c in range(k):
        tp = sum(pred[i] == c and label[i] == c for i in known)
        npred = sum(pred[i] == c for i in known)
        nlab = sum(label[i] == c for i in known)
        assert r["per_class"][c]["precision"] == (pytest.approx(tp / npred) if npred else None)
        assert r["per_class"][c]["recall"] == (pytest.approx(tp / nlab) if nlab else None)
        assert r["confusion"][c] == [sum(pred[i] == j and label[i] == c for i in known) for j in range(k)]
    conf = [float(np.float32(top_prob[i, 0])) for i in known]
    assert r["calibration"]["ece"] == pytest.approx(brute_ece(conf, [pred[i] == label[i] for i in known], 15))
    has = clean >= 0
    assert r["accuracy_clean"] == pytest.approx(float((pred[has] == clean[has]).mean()))


def test_no_labels_no_report():
    assert evaluation.evaluate(np.full(3, -1), np.full(3, -1), np.zeros((3, 1), np.int32),
                               np.ones((3, 1), np.float32), ["a"]) is None


def test_csv_cells_neutralized_as_csv_cells_does():
    import pyarrow as pa
    from pipeline.csv_cells import neutralize
    from train.predict.outputs import neutralized
    cells = ["=HYPERLINK(1)", "+1", "-1", "@SUM(1)", "\tx", "\ry", "'=z", "''+q", "ok", "a=b", "'x", ""]
    t = neutralized(pa.table({"key": cells, "n": list(range(len(cells)))}))
    assert t.column("key").to_pylist() == [neutralize(c) for c in cells]
    assert t.column("n").to_pylist() == list(range(len(cells)))
