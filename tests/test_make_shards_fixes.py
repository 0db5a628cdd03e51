"""tools/make_shards.py --label-fixes: a reviewer's decisions (by sample key or global index,
as pipeline.fixes reads them) written into new shards, the card and the manifest."""

import hashlib

import pytest

from pipeline.convert import jobs
from tests.shardcheck import CLOTHING1M_CLASSES, assert_one_line_error, make_clothing1m, read_back, run


@pytest.fixture
def converted(tmp_path, capsys):
    """A source and its conversion without fixes: the review's starting point."""
    src = tmp_path / "clothing1m"
    make_clothing1m(src, annotations=False)
    out = tmp_path / "before"
    rc, _, err = run(["clothing1m", src, "--out", out, "--name", "c1m", "--shard-size", "3"], capsys)
    assert rc == 0, err
    return src, read_back(out, "c1m", tmp_path)


def convert(src, out, fixes, capsys):
    return run(["clothing1m", src, "--out", out, "--name", "c1m", "--shard-size", "3", "--label-fixes", fixes], capsys)


def test_fixes_relabel_and_drop_in_the_new_shards(tmp_path, converted, capsys):
    src, before = converted
    rows = before["rows"]
    a, b, c, d = rows[0], rows[4], rows[7], rows[11]          # train x3, val x1
    fixes = tmp_path / "decisions.csv"                        # the review page's export
    fixes.write_text("key,index,given,decision,new_label\n"
                     f"{a['key']},{a['index']},x,accept,{CLOTHING1M_CLASSES[(a['label'] + 1) % 14]}\n"
                     f"{b['key']},{b['index']},x,drop,\n"
                     f"{c['key']},{c['index']},x,keep,\n"
                     f"{d['key']},{d['index']},x,relabel,{(d['label'] + 2) % 14}\n")
    out = tmp_path / "after"
    rc, stdout, err = convert(src, out, fixes, capsys)
    assert rc == 0, err
    assert "2 relabelled, 1 dropped" in stdout
    got = read_back(out, "c1m", tmp_path)
    card = got["card"]
    assert card["label_fixes"] == {"file": str(fixes), "sha256": hashlib.sha256(fixes.read_bytes()).hexdigest(),
                                   "relabelled": 2, "dropped": 1, "kept": 1}
    assert card["options"]["label_fixes"] == str(fixes)
    assert card["splits"]["train"]["count"] == 9 and card["num_indices"] == before["card"]["num_indices"]
    want = {r["key"]: (r["index"], r["label"], r["clean_label"]) for r in rows if r["key"] != b["key"]}
    want[a["key"]] = (a["index"], (a["label"] + 1) % 14, a["clean_label"])
    want[d["key"]] = (d["index"], (d["label"] + 2) % 14, d["clean_label"])
    # the cls member and the manifest carry the fixed label; indices stay those of the review
    assert {s["key"]: (s["index"], s["cls"], s["clean"]) for sp in ("train", "val", "test") for s in got[sp]} == want
    assert {r["key"]: (r["index"], r["label"], r["clean_label"]) for r in got["rows"]} == want
    assert [s["file"] for s in card["splits"]["train"]["shards"]] == ["c1m-000.tar", "c1m-001.tar", "c1m-002.tar"]


def test_a_key_label_table_works_and_without_fixes_the_card_has_no_entry(tmp_path, converted, capsys):
    src, before = converted
    assert "label_fixes" not in before["card"] and "label_fixes" not in before["card"]["options"]
    fixes = tmp_path / "fixes.tsv"
    fixes.write_text(f"key\tlabel\n{before['rows'][2]['key']}\tdrop\n")
    rc, stdout, err = convert(src, tmp_path / "after", fixes, capsys)
    assert rc == 0, err
    assert "0 relabelled, 1 dropped" in stdout
    assert before["rows"][2]["key"] not in {r["key"] for r in read_back(tmp_path / "after", "c1m", tmp_path)["rows"]}


@pytest.mark.parametrize("body,needle", [
    ("key,label\nno_such_key,Shirt\n", "unknown key"),
    ("index,label\n0,Bikini\n", "not one of the 14 classes"),
    ("index,label\n0,Shirt\n0,Vest\n", "already decided differently"),
], ids=["unknown-key", "label-outside-classes", "conflicting-rows"])
def test_bad_fixes_files_exit_2_naming_file_and_row(tmp_path, converted, capsys, body, needle):
    src, _ = converted
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(body)
    out = tmp_path / "after"
    rc, _, err = convert(src, out, fixes, capsys)
    assert_one_line_error(rc, err, str(fixes), "row 2" if "already" not in needle else "row 3", needle)
    assert not out.exists()


def test_a_resume_with_changed_fixes_is_refused(tmp_path, converted, capsys, monkeypatch):
    src, _ = converted
    out = tmp_path / "after"
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("index,label\n0,Shirt\n")

    def killed(job):
        raise KeyboardInterrupt              # a kill after the plan is recorded, before any shard
    monkeypatch.setattr(jobs, "write_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        convert(src, out, fixes, capsys)
    monkeypatch.undo()
    fixes.write_text("index,label\n0,Vest\n")
    rc, _, err = convert(src, out, fixes, capsys)
    assert_one_line_error(rc, err, "other inputs or options")
    fixes.write_text("index,label\n0,Shirt\n")
    rc, _, err = convert(src, out, fixes, capsys)
    assert rc == 0, err
