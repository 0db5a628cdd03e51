"""pipeline/safe_io.py and pipeline/csv_cells.py: no write follows a link planted at the name,
in the folder or at a temporary name; deleting removes only regular files and real folders;
reads open only regular files within their cap; CSV cells a spreadsheet would evaluate are
neutralized and read back unchanged."""
import csv
import io
import os
import threading

import matplotlib
import pytest

from pipeline import csv_cells, safe_io
from pipeline.shards import DataError

matplotlib.use("Agg")


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "victim.txt"
    v.write_text("precious\n")
    return v


@pytest.fixture
def out(tmp_path):
    return safe_io.out_dir(tmp_path / "out")


@pytest.mark.parametrize("write", [
    lambda p: safe_io.write_text(p, "new\n"),
    lambda p: safe_io.write_bytes(p, b"new\n", durable=False),
    lambda p: safe_io.write_json(p, {"a": 1}),
    lambda p: csv_cells.write_csv(p, ["a"], [{"a": 1}]),
])
def test_a_write_replaces_a_planted_link_never_its_target(out, victim, write):
    (out / "f").symlink_to(victim)
    write(out / "f")
    assert victim.read_text() == "precious\n" and not (out / "f").is_symlink()


def test_savefig_and_a_library_path_replace_a_link(out, victim):
    import matplotlib.pyplot as plt
    (out / "c.png").symlink_to(victim)
    fig = plt.figure()
    safe_io.savefig(fig, out / "c.png")
    plt.close(fig)
    assert (out / "c.png").read_bytes()[:4] == b"\x89PNG" and victim.read_text() == "precious\n"
    (out / "t.parquet").symlink_to(victim)
    with safe_io.temp_path(out / "t.parquet") as tmp:
        assert tmp.parent != out and oct(tmp.parent.stat().st_mode)[-3:] == "700"
        tmp.write_text("library output")
    assert (out / "t.parquet").read_text() == "library output" and victim.read_text() == "precious\n"
    assert sorted(p.name for p in out.iterdir()) == ["c.png", "t.parquet"]      # no temporaries left


def test_a_failed_library_write_leaves_the_old_file(out):
    (out / "t.parquet").write_text("old")
    with pytest.raises(RuntimeError), safe_io.temp_path(out / "t.parquet") as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert (out / "t.parquet").read_text() == "old" and os.listdir(out) == ["t.parquet"]


def test_temporary_names_are_fresh_so_concurrent_writers_do_not_collide(out):
    errors = []

    def writer(n):
        try:
            for _ in range(50):
                safe_io.write_text(out / "same.json", f"{n}\n", durable=False)
        except Exception as e:  # noqa: BLE001 - collected for the assert
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and os.listdir(out) == ["same.json"]


def test_folders_that_are_links_are_refused(tmp_path, victim):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "linked").symlink_to(elsewhere)
    with pytest.raises(safe_io.OutputRefused, match="symbolic link"):
        safe_io.out_dir(tmp_path / "linked")
    with pytest.raises(safe_io.OutputRefused, match="symbolic link"):
        safe_io.write_text(tmp_path / "linked" / "f", "x")
    with pytest.raises(safe_io.OutputRefused, match="not a folder"):
        safe_io.out_dir(victim)
    assert list(elsewhere.iterdir()) == []


def test_appends_never_follow_a_link_nor_open_a_fifo(out, victim):
    with safe_io.open_append(out / "log.jsonl") as f:
        f.write("1\n")
    with safe_io.open_append(out / "log.jsonl") as f:
        f.write("2\n")
    assert (out / "log.jsonl").read_text() == "1\n2\n"
    (out / "linked.jsonl").symlink_to(victim)
    with pytest.raises(safe_io.OutputRefused, match="symbolic link"):
        safe_io.open_append(out / "linked.jsonl")
    os.mkfifo(out / "fifo.jsonl")
    with pytest.raises(safe_io.OutputRefused):                 # would wait for a reader forever
        safe_io.open_append(out / "fifo.jsonl")
    assert victim.read_text() == "precious\n"


def test_remove_deletes_only_regular_files_and_real_folders(out, tmp_path, victim):
    other = tmp_path / "other_run" / "checkpoints"
    (other / "best").mkdir(parents=True)
    (other / "best" / "model.safetensors").write_text("weights")
    (out / "checkpoints").symlink_to(other)
    with pytest.raises(safe_io.OutputRefused, match="symbolic link"):
        safe_io.remove(out / "checkpoints")
    real = out / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "link").symlink_to(victim)                  # inside a real folder: removed as a link
    safe_io.remove(real)
    safe_io.remove(out / "missing", missing_ok=True)
    assert not real.exists() and victim.read_text() == "precious\n"
    assert (other / "best" / "model.safetensors").read_text() == "weights"


def test_replace_dir_swaps_a_folder_in_over_a_link(out, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep").write_text("x")
    (out / "best").symlink_to(other)
    (out / "best.old").symlink_to(other)
    new = safe_io.private_dir(out / "best")
    (new / "meta.json").write_text("{}")
    safe_io.replace_dir(new, out / "best", out / "best.old")
    assert (out / "best" / "meta.json").exists() and not (out / "best").is_symlink()
    assert (other / "keep").read_text() == "x" and not (out / "best.old").exists()


def test_reads_open_only_regular_files_within_their_cap(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(DataError, match="not a regular file"):
        safe_io.read_capped(tmp_path / "fifo", 100, "fixes file")        # would hang
    with pytest.raises(DataError, match="not a regular file"):
        safe_io.read_capped("/dev/zero", 100, "fixes file")              # would fill the memory
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(DataError, match="larger than 101|larger than 100"):
        safe_io.read_capped(tmp_path / "big", 100, "fixes file")
    with pytest.raises(DataError, match="not found"):
        safe_io.read_capped(tmp_path / "none", 100, "fixes file")
    with pytest.raises(DataError, match="not a regular file"):
        safe_io.check_regular(tmp_path / "fifo", 100, "checkpoint file")
    assert safe_io.read_capped(tmp_path / "big", 101, "x") == b"x" * 101


ATTACKS = ["=HYPERLINK(\"http://x\",\"y\")", "@SUM(1+1)*cmd|' /C calc'!A0", "+1", "-1+2", "\tx", "\rx",
           "'=x", "''+x", "'plain", "plain", "", "=", "a=b"]


def test_csv_cells_are_neutralized_and_restored_exactly(tmp_path):
    csv_cells.write_csv(tmp_path / "s.csv", ["key", "label", "n"], [{"key": a, "label": a, "n": -3} for a in ATTACKS])
    rows = list(csv.DictReader(io.StringIO((tmp_path / "s.csv").read_bytes().decode(), newline="")))
    for a, row in zip(ATTACKS, rows):
        assert row["key"][:1] not in tuple(csv_cells.FORMULA_START), row   # a spreadsheet shows text
        assert csv_cells.restore(row["key"]) == a and row["n"] == "-3"      # numbers stay numbers


def test_results_rows_are_appended_neutralized_and_never_through_a_link(tmp_path, victim):
    csv_cells.append_row(tmp_path / "r" / "results.csv", ["method", "acc"], {"method": "=cmd()", "acc": 0.5})
    csv_cells.append_row(tmp_path / "r" / "results.csv", ["method", "acc"], {"method": "ce", "acc": -0.5})
    rows = list(csv.DictReader(io.StringIO((tmp_path / "r" / "results.csv").read_text())))
    assert [r["method"] for r in rows] == ["'=cmd()", "ce"] and rows[1]["acc"] == "-0.5"
    (tmp_path / "r" / "linked.csv").symlink_to(victim)
    with pytest.raises(safe_io.OutputRefused):
        csv_cells.append_row(tmp_path / "r" / "linked.csv", ["a"], {"a": 1})
    assert victim.read_text() == "precious\n"
