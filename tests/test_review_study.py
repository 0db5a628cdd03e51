"""tools/review_study.py's logic (issue 18 item 5): which samples an oracle reviews, the fixes
file it writes and what the trainer reads from it; the study's runs are an experiment."""
import numpy as np

from pipeline.fixes import read_fixes
from tools import review_study


def rows():
    # most suspicious first; samples 7 and 3 are wrongly labelled, 5 and 9 right
    return {"index": np.array([7, 5, 3, 9]), "label": np.array([1, 2, 0, 4]),
            "clean_label": np.array([2, 2, 1, 4])}


def test_top_picks_the_most_suspicious_and_random_is_seeded():
    r = rows()
    assert review_study.pick(r, "top", 2, 0).tolist() == [0, 1]
    a, b = review_study.pick(r, "random", 2, 0), review_study.pick(r, "random", 2, 0)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 2
    assert sorted(review_study.pick(r, "random", 4, 3).tolist()) == [0, 1, 2, 3]


def test_oracle_fixes_relabel_the_wrong_and_keep_the_right(tmp_path):
    out = tmp_path / "fixes" / "top-3.csv"
    precision, fixed = review_study.oracle_fixes(rows(), np.arange(3), out)
    assert (precision, fixed) == (2 / 3, 2)
    f = read_fixes(out, {}, 10, [str(c) for c in range(5)])
    assert f.relabel == {7: 2, 3: 1} and f.kept == {5} and not f.drop


def test_table_lists_every_pick_and_method(tmp_path):
    csv = tmp_path / "study.csv"
    for pick, k, method, acc in (("none", 0, "ce", 0.7), ("top", 500, "ce", 0.8), ("top", 500, "limit_l-s", 0.95)):
        review_study.append(csv, {"pick": pick, "k": k, "precision": 0.5, "fixed": k // 2, "method": method,
                                  "seed": 0, "epochs": 1, "best_val_acc": 0.2, "test_acc": acc,
                                  "test_acc_last": acc, "wall_s": 1.0})
    assert review_study.done_rows(csv) == {("none", 0, "ce", 0), ("top", 500, "ce", 0), ("top", 500, "limit_l-s", 0)}
    text = review_study.table(csv)
    assert "| 500 | top | 0.500 | 250 | 0.8000 | 0.9500 |" in text
    assert "| 0 | none | 0.500 | 0 | 0.7000 | - |" in text


def test_balanced_takes_each_predicted_class_in_turn():
    r = rows()
    r["predicted"] = np.array([0, 0, 1, 1])           # rows 0, 1 predicted class 0; rows 2, 3 class 1
    assert review_study.pick(r, "balanced", 2, 0).tolist() == [0, 2]
    assert review_study.pick(r, "balanced", 3, 0).tolist() == [0, 1, 2]
