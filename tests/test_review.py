"""tools/review_labels.py without a browser: the noise-matrix estimate on planted noise, the
page's files from a labels folder, its embedded data, the Label Studio tasks (read back by
pipeline/fixes.py) and its one-line errors."""
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.fixes import read_fixes
from pipeline.noise import NoiseSpec, transition_matrix
from tests.shardkit import make_digit_shards
from tools import review_labels as rl
from tools.review import label_studio, noise_matrix
from tools.review import page as review_page

RANK_SCHEMA = pa.schema([("key", pa.string()), ("index", pa.int64()), ("shard", pa.string()),
                         ("label", pa.int64()), ("clean_label", pa.int64()), ("score", pa.float32()),
                         ("rank", pa.int64()), ("classifier_pred", pa.int64()), ("predictor_pred", pa.int64())])


def fake_labels(shards, out, seed=0, flip=0.3):
    """A rank_labels output folder for the train split of `shards` without training: labels
    flipped at random, a predictor that is right 90% of the time, flipped samples scored high."""
    rng = np.random.default_rng(seed)
    m = pq.read_table(shards / "digits.parquet").to_pydict()
    rows = [i for i, s in enumerate(m["split"]) if s == "train"]
    clean = np.array([m["clean_label"][i] for i in rows])
    given = np.where(rng.random(len(rows)) < flip, (clean + rng.integers(1, 10, len(rows))) % 10, clean)
    pp = np.where(rng.random(len(rows)) < 0.9, clean, rng.integers(0, 10, len(rows)))
    score = (given != clean) + rng.random(len(rows)) * 0.5
    rank = np.empty(len(rows), np.int64)
    rank[np.lexsort((np.arange(len(rows)), -score))] = np.arange(1, len(rows) + 1)
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"key": [m["key"][i] for i in rows], "index": [m["index"][i] for i in rows],
                             "shard": [m["shard"][i] for i in rows], "label": given, "clean_label": clean,
                             "score": score.astype(np.float32), "rank": rank, "classifier_pred": pp,
                             "predictor_pred": pp}, schema=RANK_SCHEMA), out / "label_scores.parquet")
    (out / "summary.json").write_text(json.dumps({"n": len(rows), "n_wrong": int((given != clean).sum()),
                                                  "roc_auc": 0.99, "split": "train", "method": "predictor mae"}))
    return out


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("digits"), n_train=200, n_test=20)


@pytest.fixture(scope="module")
def page(shards, tmp_path_factory):
    root = tmp_path_factory.mktemp("review")
    labels = fake_labels(shards, root / "run" / "labels")
    out = root / "page"
    assert rl.cli(["--labels", str(labels), "--out", str(out), "--top", "50", "--card", str(shards / "digits.json"),
                   "--label-studio", str(out / "ls_tasks.json")]) == 0
    return labels, out


def page_data(out):
    html = (out / "index.html").read_text()
    m = re.search(r'<script id="review-data" type="application/json">(.*?)</script>', html, re.S)
    return html, json.loads(m.group(1))


# ---- the transition matrix estimate ----

def noisy(t, n=20000, seed=0, proxy_acc=0.9):
    """clean labels, given labels drawn through t, and a proxy right proxy_acc of the time."""
    rng = np.random.default_rng(seed)
    k = len(t)
    clean = rng.integers(0, k, n)
    given = np.array([rng.choice(k, p=t[c]) for c in clean])
    proxy = np.where(rng.random(n) < proxy_acc, clean, rng.integers(0, k, n))
    return clean, given, proxy


def test_estimate_finds_uniform_noise():
    classes = [str(i) for i in range(10)]
    t = transition_matrix(NoiseSpec("uniform", 0.8), classes)
    clean, given, proxy = noisy(t)
    est = noise_matrix.transition_estimate(given, proxy, 10)
    off = est["matrix"][~np.eye(10, dtype=bool)]
    assert np.abs(off - 0.8 / 9).max() < 0.03           # every pair flipped, equally
    assert np.allclose(est["noise_rate"], 0.8, atol=0.03)
    exact = noise_matrix.transition_estimate(given, clean, 10)     # a perfect proxy gives the empirical truth
    assert noise_matrix.mean_abs_error(exact["matrix"], t) < 0.01


def test_estimate_finds_flipped_pairs():
    pairs = {2: 7, 3: 8, 5: 6, 7: 1}
    t = np.eye(10)
    for s, d in pairs.items():
        t[s, s], t[s, d] = 0.6, 0.4
    clean, given, proxy = noisy(t, seed=1)
    est = noise_matrix.transition_estimate(given, proxy, 10)
    assert {(i, j) for i, j, _ in est["pairs"][:4]} == set(pairs.items())
    assert all(v > 0.3 for _, _, v in est["pairs"][:4]) and est["pairs"][4][2] < 0.05
    assert noise_matrix.mean_abs_error(est["matrix"], t) < 0.02


def test_estimate_leaves_thin_rows_unestimated():
    est = noise_matrix.transition_estimate(np.array([0, 0, 1]), np.array([0, 0, 1]), 3, min_rows=2)
    assert est["matrix"][0, 0] == 1.0 and np.isnan(est["matrix"][1]).all() and np.isnan(est["matrix"][2]).all()


# ---- the page's files ----

def test_page_files(page):
    labels, out = page
    html, d = page_data(out)
    assert len(d["rows"]["index"]) == 50 and d["rows"]["rank"] == sorted(d["rows"]["rank"]) == list(range(1, 51))
    assert d["classes"] == [str(i) for i in range(10)] and d["run_id"].startswith("run/labels@")
    thumbs = d["rows"]["thumb"]
    assert all(thumbs) and len(set(thumbs)) == 50 and all((out / t).is_file() for t in thumbs)
    assert all(t.startswith("thumbs/") and t.endswith(".png") for t in thumbs)   # grey digits: PNG
    # no network: no URL the browser could fetch, no external script or style
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", html) and "@import" not in html
    noise = json.loads((out / "noise.json").read_text())
    assert (out / "noise_matrix.png").stat().st_size > 1000
    assert noise["true"] is not None and noise["mae"] < 0.1 and d["noise"]["mae"] == noise["mae"]


def test_embedded_data_cannot_close_the_script():
    text = review_page.embed_json({"source": "</script><script>alert(1)</script><!--"})
    assert "<" not in text and json.loads(text)["source"].startswith("</script>")


def test_label_studio_round_trip(page, shards):
    """The import tasks carry the thumbnail and the predicted label as a pre-annotation; an
    export of them (annotations added as Label Studio writes them) reads back as fixes."""
    _, out = page
    tasks = json.loads((out / "ls_tasks.json").read_text())
    assert len(tasks) == 50
    t0 = tasks[0]
    assert t0["data"]["image"].startswith("/data/local-files/?d=thumbs/")
    res = t0["predictions"][0]["result"][0]
    assert res["type"] == "choices" and res["from_name"] == "label" and res["to_name"] == "image"
    cfg = (out / "label_studio_config.xml").read_text()
    assert '<Choices name="label" toName="image"' in cfg and '<Choice value="drop"/>' in cfg
    for n, t in enumerate(tasks[:3]):                  # what an annotator would submit
        t.update(id=n + 1, annotations=[{"id": n + 1, "was_cancelled": False, "result": [
            {"from_name": "label", "to_name": "image", "type": "choices",
             "value": {"choices": ["drop" if n == 2 else t["predictions"][0]["result"][0]["value"]["choices"][0]]}}]}])
    exp = out / "export.json"
    exp.write_text(json.dumps(tasks[:3]))
    m = pq.read_table(shards / "digits.parquet").to_pydict()
    f = read_fixes(exp, dict(zip(m["key"], m["index"])), max(m["index"]) + 1, [str(i) for i in range(10)])
    assert f.n_dropped == 1 and f.n_relabelled + f.n_kept == 2


def test_errors_are_one_line(tmp_path, shards, capsys):
    assert rl.cli(["--labels", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "label_scores.parquet" in err
    labels = fake_labels(shards, tmp_path / "lonely" / "labels")
    assert rl.cli(["--labels", str(labels), "--out", str(tmp_path / "o")]) == 2
    assert "config.json" in capsys.readouterr().err


def test_ce_run_uses_the_classifier(shards, tmp_path):
    """A CE run has no predictor (predictor_pred null): the page and the matrix use the
    classifier's label, and so do the Label Studio pre-annotations."""
    labels = fake_labels(shards, tmp_path / "run" / "labels", seed=3)
    t = pq.read_table(labels / "label_scores.parquet")
    t = t.set_column(t.schema.get_field_index("predictor_pred"), "predictor_pred",
                     pa.nulls(len(t), pa.int64()))
    pq.write_table(t, labels / "label_scores.parquet")
    out = tmp_path / "page"
    assert rl.cli(["--labels", str(labels), "--out", str(out), "--top", "20",
                   "--card", str(shards / "digits.json")]) == 0
    _, d = page_data(out)
    assert d["rows"]["pp"] == [-1] * 20 and d["noise"]["proxy"] == "classifier"
    tasks_rows = label_studio.label_studio_tasks(d["rows"], d["classes"], "", "ce")
    assert tasks_rows[0]["predictions"][0]["result"][0]["value"]["choices"] == [d["classes"][d["rows"]["cp"][0]]]


def test_labels_outside_the_card_are_refused(shards, tmp_path, capsys):
    labels = fake_labels(shards, tmp_path / "run" / "labels", seed=4)
    t = pq.read_table(labels / "label_scores.parquet")
    t = t.set_column(t.schema.get_field_index("label"), "label", pa.array([12] * len(t), pa.int64()))
    pq.write_table(t, labels / "label_scores.parquet")
    assert rl.cli(["--labels", str(labels), "--out", str(tmp_path / "o"), "--card", str(shards / "digits.json")]) == 2
    assert "outside the 10 classes" in capsys.readouterr().err
