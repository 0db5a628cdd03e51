"""pipeline/fixes.py: the review page's CSV, plain key/index tables and Label Studio exports
(fixtures written from Label Studio's documented task and export formats), and one-line
errors naming the file and row."""
import hashlib
import json

import pytest

from pipeline.fixes import Fixes, read_fixes
from pipeline.shards import DataError

CLASSES = ["cat", "dog", "bird"]
KEYS = {f"img{i:03d}": i for i in range(10)}


def write(tmp_path, text, name="fixes.csv", mode="w"):
    p = tmp_path / name
    if mode == "wb":
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def read(p, keys=KEYS, n=10):
    return read_fixes(p, keys, n, CLASSES)


def test_page_csv(tmp_path):
    p = write(tmp_path, "key,index,given,decision,new_label\n"
                        "img001,1,cat,accept,dog\nimg002,2,dog,keep,dog\nimg003,3,bird,drop,\n"
                        "img004,4,cat,relabel,bird\n")
    f = read(p)
    assert isinstance(f, Fixes)
    assert f.relabel == {1: 1, 4: 2} and f.drop == {3} and f.kept == {2}
    assert (f.n_relabelled, f.n_dropped, f.n_kept) == (2, 1, 1)
    assert f.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() and f.path == str(p)
    with pytest.raises(Exception):
        f.path = "x"                              # frozen


def test_key_label_and_index_label_tables(tmp_path):
    f = read(write(tmp_path, "key,label\nimg000,dog\nimg005,2\nimg006,DROP\n"))
    assert f.relabel == {0: 1, 5: 2} and f.drop == {6}
    f = read(write(tmp_path, "index\tlabel\n7\tbird\n8\t0\n", "t.tsv"))
    assert f.relabel == {7: 2, 8: 0}
    # a BOM (spreadsheets) and blank lines change nothing; a callable lookup works too
    f = read_fixes(write(tmp_path, "\ufeffkey,label\n\nimg009, Cat\n"), lambda k: KEYS[k], 10, CLASSES)
    assert f.relabel == {9: 0}


def test_duplicate_rows_that_agree_are_one_decision(tmp_path):
    f = read(write(tmp_path, "key,label\nimg001,dog\nimg001,dog\n"))
    assert f.relabel == {1: 1}


@pytest.mark.parametrize("body,row,words", [
    ("key,label\nimg001,dog\nnope,cat\n", "row 3", "unknown key"),
    ("key,label\nimg001,horse\n", "row 2", "not one of the 3 classes"),
    ("key,label\nimg001,7\n", "row 2", "not one of the 3 classes"),
    ("index,label\n10,cat\n", "row 2", "not a sample index"),
    ("index,label\n-1,cat\n", "row 2", "not a sample index"),
    ("index,label\n1.0,cat\n", "row 2", "not a sample index"),
    ("key,label\nimg001,dog\nimg002,cat\nimg001,cat\n", "row 4", "already decided differently (row 2"),
    ("key,label\nimg001,dog\nimg001,drop\n", "row 3", "already decided differently"),
    ("key,index,label\nimg001,2,dog\n", "row 2", "is sample 1"),
    ("key,label\nimg001,dog,extra\n", "row 2", "has 3 fields"),
    ("key,label\nimg001,\"dog\n", "row", "not valid CSV"),
    ("name,label\nimg001,dog\n", "row 1", "no 'key' or 'index'"),
    ("key,decision,new_label\nimg001,maybe,dog\n", "row 2", "the decision is not one of"),
    ("key,decision,new_label\nimg001,accept,\n", "row 2", "has no label"),
    ("", "row 1", "empty"),
])
def test_bad_rows_name_file_and_row(tmp_path, body, row, words):
    p = write(tmp_path, body)
    with pytest.raises(DataError) as e:
        read(p)
    msg = str(e.value)
    assert "\n" not in msg and str(p) in msg and row in msg and words in msg, msg


def test_damaged_files(tmp_path):
    for raw, words in ((b"key,label\n\xff\xfe,dog\n", "not UTF-8"), (b"PK\x03\x04\0\0", "NUL"),
                       (b'[{"data": {"key": "img001"}, "annotations": [', "not valid JSON"),
                       (b"[" * 100000, "nested too deep")):
        p = write(tmp_path, raw, "bad.bin", "wb")
        with pytest.raises(DataError, match=words) as e:
            read(p)
        assert str(p) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="not found"):
        read(tmp_path / "missing.csv")


def test_nothing_in_the_file_is_run(tmp_path):
    """Formula-looking and code-looking cells are just unknown keys or labels."""
    marker = tmp_path / "ran"
    for body in (f"key,label\n=SYSTEM(\"touch {marker}\"),cat\n",
                 f"key,label\nimg001,__import__('os').system('touch {marker}')\n"):
        with pytest.raises(DataError):
            read(write(tmp_path, body))
    assert not marker.exists()


# ---- Label Studio (docs: "Label Studio JSON format of annotated tasks", JSON-MIN export) ----

def ls_task(tid, key, index, given, annotations):
    """A task as Label Studio exports it: id, data copied from the import, annotations with a
    `choices` result from the Choices tag `label` on the Image tag `image`."""
    return {"id": tid, "data": {"image": f"/data/local-files/?d=thumbs/{index}.png", "key": key,
                                "index": index, "given": given},
            "annotations": annotations, "predictions": [], "project": 3,
            "created_at": "2026-12-01T10:00:00.000000Z", "updated_at": "2026-12-01T10:05:00.000000Z"}


def ls_annotation(choice, cancelled=False, aid=1):
    return {"id": aid, "completed_by": 1, "was_cancelled": cancelled, "ground_truth": False,
            "lead_time": 3.2, "result_count": 0, "task": 1,
            "result": [] if choice is None else [{"id": "abc123", "type": "choices", "from_name": "label",
                                                  "to_name": "image", "origin": "manual",
                                                  "value": {"choices": [choice]}}]}


def test_label_studio_full_export(tmp_path):
    tasks = [ls_task(1, "img001", 1, "cat", [ls_annotation("dog")]),
             ls_task(2, "img002", 2, "dog", [ls_annotation("dog")]),              # confirms given
             ls_task(3, "img003", 3, "cat", [ls_annotation("drop")]),
             ls_task(4, "img004", 4, "cat", [ls_annotation("bird", cancelled=True)]),  # skipped
             ls_task(5, "img005", 5, "cat", []),                                  # not annotated
             ls_task(6, "img006", 6, "cat", [ls_annotation("bird"), ls_annotation("bird", aid=2)])]
    f = read(write(tmp_path, json.dumps(tasks), "export.json"))
    assert f.relabel == {1: 1, 6: 2} and f.drop == {3} and f.kept == {2}


def test_label_studio_json_min(tmp_path):
    rows = [{"image": "/data/local-files/?d=thumbs/1.png", "key": "img001", "index": 1, "id": 1,
             "label": "bird", "annotator": 1, "annotation_id": 1, "lead_time": 2.0},
            {"image": "x", "key": "img002", "index": 2, "id": 2, "label": {"choices": ["drop"]}}]
    f = read(write(tmp_path, json.dumps(rows), "min.json"))
    assert f.relabel == {1: 2} and f.drop == {2}


@pytest.mark.parametrize("tasks,words", [
    ([ls_task(1, "img001", 1, "cat", [ls_annotation("dog"), ls_annotation("bird", aid=2)])], "disagree"),
    ([ls_task(1, "zzz", 1, "cat", [ls_annotation("dog")])], "unknown key"),
    ([ls_task(1, "img001", 1, "cat", [ls_annotation("horse")])], "not one of the 3 classes"),
    ([ls_task(1, "img001", 1, "cat", [ls_annotation("dog")]),
      ls_task(2, "img001", 1, "cat", [ls_annotation("bird")])], "already decided differently"),
    ({"tasks": 3, "data": 5}, "'data' is not an object"),
    ([3], "not an object"),
])
def test_label_studio_errors_name_the_task(tmp_path, tasks, words):
    p = write(tmp_path, json.dumps(tasks), "export.json")
    with pytest.raises(DataError, match=words) as e:
        read(p)
    assert str(p) in str(e.value) and "task " in str(e.value)


# ---- issue 27: a class named "drop", neutralized CSV cells, files that decide nothing ----

def test_a_class_named_drop_is_distinguishable_from_dropping(tmp_path):
    classes = ["cat", "drop", "bird"]
    f = read_fixes(write(tmp_path, "key,label\nimg001,drop\nimg002,(drop)\n"), KEYS, 10, classes)
    assert f.relabel == {1: 1} and f.drop == {2}
    f = read_fixes(write(tmp_path, "key,decision,new_label\nimg001,relabel,drop\nimg002,drop,\n"), KEYS, 10, classes)
    assert f.relabel == {1: 1} and f.drop == {2}


def test_neutralized_csv_cells_are_read_back_unchanged(tmp_path):
    from pipeline.csv_cells import write_csv
    keys = {"=HYPERLINK(1)": 0, "@SUM(1)": 1, "'=x": 2}
    write_csv(tmp_path / "f.csv", ["key", "label"], [{"key": k, "label": "=cls"} for k in keys])
    f = read_fixes(tmp_path / "f.csv", keys, 10, ["=cls", "b"])
    assert f.relabel == {0: 0, 1: 0, 2: 0}


@pytest.mark.parametrize("body", ["key,label\n", '{"splits": {}, "classes": ["cat"]}',
                                  '[{"data": {"key": "img001", "image": "x.png"}}]'])
def test_a_file_that_decides_nothing_is_refused(tmp_path, body):
    with pytest.raises(DataError, match="decides nothing"):
        read(write(tmp_path, body))


def test_errors_never_quote_the_file(tmp_path):
    for body in ("admin:$6$s3cr3t:19000::\nbin:*::\n", "key,label\nadmin$6$s3cr3t,cat\n",
                 "key,label\nimg001,admin$6$s3cr3t\n", "key,decision\nimg001,s3cr3t\n"):
        with pytest.raises(DataError) as e:
            read(write(tmp_path, body))
        assert "s3cr3t" not in str(e.value)


def test_huge_numbers_are_one_line(tmp_path):
    for body in ("index,label\n" + "9" * 5000 + ",cat\n", "key,label\nimg001," + "9" * 5000 + "\n",
                 '[{"index": ' + "9" * 5000 + ', "label": "cat"}]'):
        with pytest.raises(DataError):
            read(write(tmp_path, body))


def test_fixes_to_val_or_test_samples_are_refused(tmp_path):
    with pytest.raises(DataError, match="val or test"):
        read_fixes(write(tmp_path, "index,label\n1,cat\n8,dog\n"), KEYS, 10, CLASSES, train_indices=set(range(5)))
    with pytest.raises(DataError, match="every train sample"):
        read_fixes(write(tmp_path, "index,label\n0,drop\n1,drop\n"), KEYS, 10, CLASSES, train_indices={0, 1})
