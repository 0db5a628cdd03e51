"""rank_labels --cleanlab / --fiftyone (issue 28 item 5): the arrays cleanlab takes, and
FiftyOne's FiftyOneImageClassificationDataset layout, from a tiny noisy run."""
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.shardkit import make_digit_shards, train_argv
from tools.rank_labels import cli as rank_cli
from train.limit import cli as train_cli


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    shards = make_digit_shards(root / "d", n_train=500, n_test=100)
    run = root / "run"
    assert train_cli(train_argv(shards, run, "--noise", "uniform:0.4", "--method", "limit",
                                "--predictor", "head")) == 0
    out = root / "labels"
    assert rank_cli(["--run", str(run), "--out", str(out), "--workers", "0", "--cleanlab", "--fiftyone", "25"]) == 0
    return out


def test_cleanlab_arrays_align_with_the_ranking(exported):
    c = exported / "cleanlab"
    probs, labels, index = (np.load(c / f"{n}.npy", allow_pickle=False) for n in ("pred_probs", "labels", "index"))
    scores = pq.read_table(exported / "label_scores.parquet").to_pydict()
    assert probs.shape == (len(scores["index"]), 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    assert (np.diff(index) > 0).all()
    given = dict(zip(scores["index"], scores["label"]))
    assert labels.tolist() == [given[i] for i in index.tolist()]          # the labels the run trained on
    summary = json.loads((exported / "summary.json").read_text())
    assert summary["cleanlab"].endswith("cleanlab")


def test_cleanlab_reads_the_arrays(exported):
    cleanlab = pytest.importorskip("cleanlab", reason="cleanlab is not installed (pip install -e '.[dev]')")
    from cleanlab.count import estimate_py_and_noise_matrices_from_probabilities
    from cleanlab.filter import find_label_issues
    c = exported / "cleanlab"
    probs, labels = np.load(c / "pred_probs.npy"), np.load(c / "labels.npy")
    issues = find_label_issues(labels, probs)
    assert issues.shape == labels.shape and issues.dtype == bool and cleanlab.__version__
    py, noise, inv, joint = estimate_py_and_noise_matrices_from_probabilities(labels, probs)
    assert noise.shape == (10, 10) and np.allclose(noise.sum(0), 1)


def test_fiftyone_layout(exported):
    folder = exported / "fiftyone"
    doc = json.loads((folder / "labels.json").read_text())
    assert doc["classes"] == [str(i) for i in range(10)] and len(doc["labels"]) == 25
    scores = pq.read_table(exported / "label_scores.parquet").to_pydict()
    rank_of = dict(zip(scores["key"], scores["rank"]))
    files = {p.stem: p for p in (folder / "data").iterdir()}
    assert set(files) == set(doc["labels"])
    for key, target in doc["labels"].items():
        assert target["attributes"]["rank"] == rank_of[key] <= 25      # the 25 most suspicious
        assert 0 <= target["label"] < 10 and 0 <= target["confidence"] <= 1
        assert target["attributes"]["predicted"] in doc["classes"]
        assert files[key].suffix == ".png"                            # the shard's bytes, as they were


def test_fiftyone_imports_the_folder(exported):
    """FiftyOne's own importer, the code Dataset.from_dir(dataset_type=FiftyOneImageClassificationDataset)
    runs, used directly: it needs no MongoDB (which fiftyone downloads when installed)."""
    pytest.importorskip("fiftyone", reason="fiftyone is not installed (heavy, MongoDB; not a dev dependency)")
    from fiftyone.utils.data.importers import FiftyOneImageClassificationDatasetImporter
    importer = FiftyOneImageClassificationDatasetImporter(dataset_dir=str(exported / "fiftyone"))
    with importer:
        rows = list(importer)
        classes = importer.get_dataset_info()["classes"]
    assert len(rows) == 25 and classes == [str(i) for i in range(10)]
    path, _, label = rows[0]
    assert label.label in classes and 0 <= label.confidence <= 1 and label["rank"] <= 25
    assert label["predicted"] in classes and label["score"] > 0 and Path(path).is_file()


def test_exports_need_one_process_and_a_count(exported, tmp_path, capsys):
    run = exported.parent / "run"
    assert rank_cli(["--run", str(run), "--out", str(tmp_path / "o"), "--fiftyone", "-1"]) == 2
    assert "--fiftyone must be >= 0" in capsys.readouterr().err
