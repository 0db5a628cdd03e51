"""Issue 27: no command writes through a symbolic link planted in a folder it writes (a received
run, labels or review folder, a shared make_shards --out). A link at every path each command
writes, pointing at a file or folder outside; afterwards no target has changed, and the command
either replaced the link or refused with one line (README "Security")."""
import shutil
from pathlib import Path

import pytest

from tests.shardkit import make_digit_idx, make_digit_shards, train_argv
from tools import make_shards
from tools import review_labels as rl
from tools.rank_labels import cli as rank_cli
from train.limit import cli

PRECIOUS = "precious\n"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("links"), n_train=200, n_test=100, shard_size=100)


@pytest.fixture(scope="module")
def finished(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    assert cli(train_argv(shards, out)) == 0
    assert rank_cli(["--run", str(out), "--out", str(out / "labels"), "--top", "5", "--workers", "0"]) == 0
    return out


def plant(folder: Path, names, victims: Path) -> list[Path]:
    """A link at each name (relative to folder) to its own file in `victims`."""
    victims.mkdir(exist_ok=True)
    targets = []
    for name in names:
        target = victims / name.replace("/", "__")
        target.write_text(PRECIOUS)
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).unlink(missing_ok=True)
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
        (folder / name).symlink_to(target)
        targets.append(target)
    return targets


def linked_folder(at: Path, victims: Path) -> Path:
    """`at` as a link to a folder outside holding one file."""
    target = victims / f"dir-{at.name}"
    target.mkdir(parents=True)
    (target / "keep").write_text(PRECIOUS)
    if at.is_dir() and not at.is_symlink():
        shutil.rmtree(at)
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(target, target_is_directory=True)
    return target


def untouched(targets: list[Path]) -> None:
    for t in targets:
        if t.is_dir():
            assert sorted(p.name for p in t.iterdir()) == ["keep"] and (t / "keep").read_text() == PRECIOUS, t
        else:
            assert t.read_text() == PRECIOUS, t


def no_traceback(capsys, rc: int) -> None:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if rc:
        assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err[-800:]


# ---- train ----

RUN_LOGS = ["metrics.jsonl", "skipped.jsonl", "summary.csv", "curves.png", "resumes.jsonl"]


def test_a_fresh_run_replaces_planted_links(shards, tmp_path, capsys):
    out = tmp_path / "run"
    targets = plant(out, RUN_LOGS, tmp_path / "victims")
    assert cli(train_argv(shards, out)) == 0
    no_traceback(capsys, 0)
    untouched(targets)
    assert (out / "summary.csv").is_file() and not (out / "summary.csv").is_symlink()


def test_an_out_folder_that_is_a_link_is_refused(shards, tmp_path, capsys):
    target = linked_folder(tmp_path / "run", tmp_path / "victims")
    assert cli(train_argv(shards, tmp_path / "run")) == 2
    no_traceback(capsys, 2)
    untouched([target])


@pytest.mark.parametrize("names, folder, flags, rc", [
    # resume: the whole end of a run written again, and the checkpoint's scratch names
    (["summary.csv", "curves.png", "config.json", "checkpoints/last.tmp", "checkpoints/last.old",
      "checkpoints/best.old", "checkpoints/last/meta.json.tmp", "final.json.tmp"], None,
     ["--epochs", "2", "--resume", "auto"], 0),
    (["resumes.jsonl"], None, ["--epochs", "2", "--resume", "auto"], 2),           # an append: refused
    (["metrics.jsonl"], None, ["--epochs", "2", "--resume", "auto"], 2),           # read back first: damaged
    ([], "checkpoints", ["--epochs", "2", "--resume", "auto"], 2),
    # --overwrite deletes only regular files and real folders
    ([], "checkpoints", ["--overwrite"], 2),
    (["config.json"], None, ["--overwrite"], 2),
    (["curves.png"], None, ["--overwrite"], 2),
])
def test_resume_and_overwrite_never_write_through_links(shards, finished, tmp_path, capsys, names, folder, flags, rc):
    out = shutil.copytree(finished, tmp_path / "run", symlinks=True)
    targets = plant(out, names, tmp_path / "victims")
    if folder:
        targets.append(linked_folder(out / folder, tmp_path / "victims"))
    assert cli(train_argv(shards, out, *flags)) == rc
    no_traceback(capsys, rc)
    untouched(targets)


# ---- rank_labels and review_labels ----

LABEL_FILES = ["label_scores.parquet", "summary.json", "suspects.csv", "suspects.png"]


def test_rank_labels_replaces_links_and_refuses_linked_folders(finished, tmp_path, capsys):
    labels = tmp_path / "labels"
    targets = plant(labels, LABEL_FILES, tmp_path / "victims")
    argv = ["--run", str(finished), "--top", "5", "--workers", "0", "--out"]
    assert rank_cli(argv + [str(labels)]) == 0
    no_traceback(capsys, 0)
    assert rank_cli(argv + [str(targets[0])]) == 2                   # --out naming a file
    no_traceback(capsys, 2)
    targets.append(linked_folder(tmp_path / "linked", tmp_path / "victims"))
    assert rank_cli(argv + [str(tmp_path / "linked")]) == 2
    no_traceback(capsys, 2)
    untouched(targets)


def test_review_labels_replaces_links_and_refuses_linked_folders(finished, shards, tmp_path, capsys):
    review = tmp_path / "review"
    names = ["index.html", "noise.json", "noise_matrix.png", "ls/tasks.json", "ls/label_studio_config.xml"]
    targets = plant(review, names, tmp_path / "victims")
    argv = ["--labels", str(finished / "labels"), "--top", "5", "--card", str(shards / "digits.json"),
            "--label-studio", str(review / "ls" / "tasks.json"), "--out"]
    assert rl.cli(argv + [str(review)]) == 0
    no_traceback(capsys, 0)
    assert (review / "ls" / "tasks.json").read_text().startswith("[")
    for thumb in (review / "thumbs").iterdir():                      # a thumbnail's name, linked
        targets += plant(review, [f"thumbs/{thumb.name}"], tmp_path / "victims")
    assert rl.cli(argv + [str(review)]) == 0
    no_traceback(capsys, 0)
    targets.append(linked_folder(review / "thumbs", tmp_path / "victims"))
    assert rl.cli(argv + [str(review)]) == 2
    no_traceback(capsys, 2)
    untouched(targets)


# ---- make_shards ----

def shard_argv(src, out, *extra):
    return ["mnist", str(src), "--out", str(out), "--name", "t", "--shard-size", "100", *extra]


SHARD_FILES = ["t.json", "t.parquet", "t-000.tar", "t-000.idx", "t-001.tar", "t-test-000.tar", "t-test-000.idx",
               "t.json.tmp", "t.parquet.tmp", "t-000.tar.tmp", "t-000.idx.tmp", "t-001.tar.tmp", "t-001.idx.tmp"]


def test_make_shards_replaces_links_in_a_shared_out(tmp_path, capsys):
    src = make_digit_idx(tmp_path / "idx", 200, 100)
    out = tmp_path / "out"
    targets = plant(out, SHARD_FILES, tmp_path / "victims")
    assert make_shards.main(shard_argv(src, out)) == 0
    no_traceback(capsys, 0)
    untouched(targets)


def test_make_shards_parts_and_merge_replace_links(tmp_path, capsys):
    src = make_digit_idx(tmp_path / "idx", 200, 100)
    out = tmp_path / "out"
    targets = plant(out, SHARD_FILES + ["t.partial/plan.json.tmp", "t.partial/part-1-of-2.json",
                                        "t.partial/shards/t-000.tar.json"], tmp_path / "victims")
    for part in ("1/2", "2/2"):
        assert make_shards.main(shard_argv(src, out, "--part", part)) == 0
    targets += plant(out, ["t.json", "t.parquet"], tmp_path / "victims2")
    assert make_shards.main(shard_argv(src, out, "--merge")) == 0
    no_traceback(capsys, 0)
    untouched(targets)
    assert (out / "t.json").is_file() and not (out / "t.json").is_symlink()


@pytest.mark.parametrize("linked", ["out", "t.partial", "t.partial/shards"])
def test_make_shards_refuses_linked_folders(tmp_path, capsys, linked):
    src = make_digit_idx(tmp_path / "idx", 200, 100)
    out = tmp_path / "out"
    if linked != "out":
        out.mkdir()
    target = linked_folder(out if linked == "out" else out / linked, tmp_path / "victims")
    assert make_shards.main(shard_argv(src, out, "--part", "1/2")) == 2
    no_traceback(capsys, 2)
    untouched([target])
