"""Issue 27 items 4-8 on the trainer's side: every damaged or hostile file a run reads is one
line and exit code 2, never a traceback, a hang or a silent no-op (README "Damaged data")."""
import json
import os
import shutil
import socket
import threading

import pyarrow.parquet as pq
import pytest
import torch

from tests.shardkit import make_digit_shards, train_argv
from tests.test_trust_runs import one_line
from train.limit import cli

argv = train_argv


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_digit_shards(tmp_path_factory.mktemp("damaged"), n_train=200, n_test=100, shard_size=100)


@pytest.fixture(scope="module")
def run(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "done"
    assert cli(argv(shards, out)) == 0
    return out


@pytest.fixture(scope="module")
def manifest(shards):
    return pq.read_table(shards / "digits.parquet").to_pylist()


def resume(shards, run, tmp_path, damage) -> int:
    """Copy the finished run, damage it, resume it for one more epoch."""
    copy = shutil.copytree(run, tmp_path / "copy")
    damage(copy / "checkpoints" / "last")
    return cli(argv(shards, copy, "--epochs", "2", "--resume", "auto"))


def edit_meta(**change):
    def damage(folder):
        meta = json.loads((folder / "meta.json").read_text())
        meta.update(change)
        (folder / "meta.json").write_text(json.dumps(meta))
    return damage


@pytest.mark.parametrize("change, says", [
    ({"epoch": "0"}, "'epoch'"), ({"epoch": -5}, "'epoch'"), ({"step": -1}, "'step'"),
    ({"best": "high"}, "'best'"), ({"in_epoch": True, "position": ["junk"], "meter": {}}, "'position'"),
    ({"in_epoch": True, "position": [{"0": 1}], "meter": {"sums": [1], "stats": {}}}, "'meter'"),
])
def test_a_damaged_meta_json_is_one_line(shards, run, tmp_path, capsys, change, says):
    assert resume(shards, run, tmp_path, edit_meta(**change)) == 2
    line = one_line(capsys)
    assert "meta.json" in line and says in line, line


def test_a_meta_json_that_is_a_list_is_one_line(shards, run, tmp_path, capsys):
    assert resume(shards, run, tmp_path, lambda f: (f / "meta.json").write_text("[1, 2]")) == 2
    assert "meta.json" in one_line(capsys)


def edit_state(change):
    def damage(folder):
        state = torch.load(folder / "train_state.pt", weights_only=True)
        torch.save(change(state), folder / "train_state.pt")
    return damage


@pytest.mark.parametrize("change", [
    lambda s: {k: v for k, v in s.items() if k != "torch_rng"},
    lambda s: {**s, "torch_rng": s["torch_rng"][:100]},
    lambda s: {**s, "python_rng": s["python_rng"][:10]},
    lambda s: {**s, "python_rng": s["python_rng"][:-1] + [10 ** 20]},
    lambda s: [1, 2, 3],
])
def test_a_damaged_train_state_is_one_line(shards, run, tmp_path, capsys, change):
    assert resume(shards, run, tmp_path, edit_state(change)) == 2
    assert "train_state.pt" in one_line(capsys)


def test_a_lock_with_a_huge_pid_is_one_line(shards, run, tmp_path, capsys):
    copy = shutil.copytree(run, tmp_path / "copy")
    # this host: the pid reaches os.kill, which overflows on it
    (copy / ".lock").write_text(json.dumps({"pid": 10 ** 20, "host": socket.gethostname(), "started": 0}))
    assert cli(argv(shards, copy, "--epochs", "2", "--resume", "auto")) == 2
    assert "lock" in one_line(capsys)


def test_an_image_size_beyond_any_use_is_refused(shards, tmp_path, capsys):
    assert cli(argv(shards, tmp_path / "r", "--image-size", "1000000")) == 2
    assert "--image-size" in one_line(capsys)


def finishes(fn, seconds=120):
    """fn() in a thread: (whether it returned in time, its value). A FIFO read would hang."""
    box = []
    t = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    t.start()
    t.join(seconds)
    return bool(box), box[0] if box else None


def test_fixes_that_are_a_fifo_or_a_device_are_refused(shards, tmp_path, capsys):
    os.mkfifo(tmp_path / "fifo.csv")
    for i, path in enumerate((tmp_path / "fifo.csv", "/dev/zero")):
        done, rc = finishes(lambda: cli(argv(shards, tmp_path / f"r{i}", "--label-fixes", str(path))))
        assert done and rc == 2
        assert "not a regular file" in one_line(capsys)
        assert not (tmp_path / f"r{i}" / ".lock").exists()


def test_a_fixes_error_never_echoes_the_file(shards, tmp_path, capsys):
    secret = tmp_path / "shadow"
    secret.write_text("admin:$6$s3cr3t:19000:0:99999:7:::\nbin:*:19000:0:99999:7:::\n")
    assert cli(argv(shards, tmp_path / "r", "--label-fixes", str(secret))) == 2
    line = one_line(capsys)
    assert "shadow" in line and "s3cr3t" not in line


@pytest.mark.parametrize("text", ["key,label\n", "index,label\n" + "9" * 5000 + ",1\n",
                                  "key,label\n{key}," + "9" * 5000 + "\n"])
def test_fixes_that_decide_nothing_or_hold_huge_numbers_are_one_line(shards, manifest, tmp_path, capsys, text):
    (tmp_path / "f.csv").write_text(text.replace("{key}", manifest[0]["key"]))
    assert cli(argv(shards, tmp_path / "r", "--label-fixes", str(tmp_path / "f.csv"))) == 2
    assert "f.csv" in one_line(capsys)


def test_the_card_passed_as_fixes_is_refused(shards, tmp_path, capsys):
    assert cli(argv(shards, tmp_path / "r", "--label-fixes", str(shards / "digits.json"))) == 2
    assert "decides nothing" in one_line(capsys)


def test_dropping_every_train_sample_is_refused(shards, manifest, tmp_path, capsys):
    rows = "".join(f"{r['index']},drop\n" for r in manifest if r["split"] == "train")
    (tmp_path / "f.csv").write_text("index,label\n" + rows)
    assert cli(argv(shards, tmp_path / "r", "--label-fixes", str(tmp_path / "f.csv"))) == 2
    assert "every train sample" in one_line(capsys)
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_relabelling_a_test_sample_is_refused_not_counted(shards, manifest, tmp_path, capsys):
    test = next(r for r in manifest if r["split"] == "test")
    (tmp_path / "f.csv").write_text(f"key,label\n{test['key']},{(test['label'] + 1) % 10}\n")
    assert cli(argv(shards, tmp_path / "r", "--label-fixes", str(tmp_path / "f.csv"))) == 2
    assert "val or test sample" in one_line(capsys)


@pytest.mark.parametrize("change", [lambda c: c.pop("normalize"), lambda c: c["augment"].update(size=10 ** 6),
                                    lambda c: c.update(channels=7), lambda c: c["augment"].update(bogus=1)])
def test_a_damaged_card_is_one_line(shards, tmp_path, capsys, change):
    copy = shutil.copytree(shards, tmp_path / "sent")
    card = json.loads((copy / "digits.json").read_text())
    change(card)
    (copy / "digits.json").write_text(json.dumps(card))
    assert cli(argv(copy, tmp_path / "r")) == 2
    assert "digits.json" in one_line(capsys)


def test_a_card_that_is_a_fifo_is_refused(shards, tmp_path, capsys):
    copy = shutil.copytree(shards, tmp_path / "sent")
    (copy / "digits.json").unlink()
    os.mkfifo(copy / "digits.json")
    done, rc = finishes(lambda: cli(argv(copy / "digits-{000..001}.tar", tmp_path / "r")))
    assert done and rc == 2
    assert "not a regular file" in one_line(capsys)


def test_a_received_config_with_a_huge_image_size_is_refused(run, tmp_path, capsys):
    from tools.rank_labels import cli as rank_cli
    copy = shutil.copytree(run, tmp_path / "sent")
    cfg = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**cfg, "image_size": 1000000}))
    assert rank_cli(["--run", str(copy), "--out", str(tmp_path / "labels"), "--workers", "0"]) == 2
    assert "--image-size" in one_line(capsys)
