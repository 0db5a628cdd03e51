"""Hostile command lines and checkpoints: code-running pickles given as --pretrained,
--init-from or --resume are refused unrun; bad command lines give one line that names the flag
and exit code 2. Hostile data: tests/test_hostile.py."""
import pickle
from pathlib import Path

import pytest
import torch

from tests.test_hostile import digits, train  # noqa: F401 (digits: a module-scoped fixture)
from train.limit import cli


@pytest.fixture(scope="module")
def clean_run(digits, tmp_path_factory):
    """A finished 1-epoch run: real checkpoints to tamper with."""
    out = tmp_path_factory.mktemp("runs") / "clean"
    assert train(digits, out) == 0
    return out


# ---------------------------------------------------------------- untrusted pickles
class _Evil:
    """Unpickling this creates `marker`: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _write_evil(path: Path, marker: Path, fmt: str) -> Path:
    if fmt == "torch":
        torch.save({"state_dict": _Evil(marker)}, path)    # torch's zip format
    else:
        with open(path, "wb") as f:                        # a plain pickle (protocol 2: see test_backbones)
            pickle.dump({"state_dict": _Evil(marker)}, f, protocol=2)
    return path


@pytest.mark.parametrize("fmt", ["torch", "pickle"])
@pytest.mark.parametrize("flag", ["--pretrained", "--init-from", "--resume", "--resume model"])
def test_code_running_pickles_are_refused(digits, clean_run, tmp_path, capsys, flag, fmt):
    import shutil
    marker = tmp_path / "pwned"
    if flag == "--pretrained":
        extra = ["--pretrained", str(_write_evil(tmp_path / "evil.pt", marker, fmt))]
    elif flag == "--init-from":                            # a run folder whose weights are a pickle
        ckpt = tmp_path / "ckpt"
        shutil.copytree(clean_run / "checkpoints" / "best", ckpt)
        _write_evil(ckpt / "model.safetensors", marker, fmt)
        extra = ["--init-from", str(ckpt), "--method", "limit"]
    else:                                                  # a real checkpoint, one file replaced
        ckpt = tmp_path / "ckpt"
        shutil.copytree(clean_run / "checkpoints" / "last", ckpt)
        name = "model.safetensors" if flag.endswith("model") else "train_state.pt"
        _write_evil(ckpt / name, marker, fmt)
        extra = ["--resume", str(ckpt)]
    capsys.readouterr()
    assert train(digits, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert any(w in err[0] for w in ("refus", "not safetensors", "only safetensors")), err
    assert not marker.exists()
    with open(tmp_path / "control.pkl", "wb") as f:        # control: the payload does run code
        pickle.dump(_Evil(marker), f, protocol=2)
    with open(tmp_path / "control.pkl", "rb") as f:
        pickle.load(f).close()
    assert marker.exists()


# ---------------------------------------------------------------- bad command lines
@pytest.fixture(scope="module")
def odd_files(digits, tmp_path_factory):
    """A regular file (for an --out below it), a 2x2 noise matrix, a folder with no card, and a
    3-class mnist_cnn checkpoint (for --init-from into 10 classes)."""
    import timm
    from safetensors.torch import save_file
    import models.backbones  # noqa: F401  (registers mnist_cnn)
    root = tmp_path_factory.mktemp("odd")
    (root / "a_file").write_text("not a folder")
    (root / "m.txt").write_text("0.5 0.5\n0.5 0.5\n")
    (root / "no_card").mkdir()
    (root / "three").mkdir()
    sd = timm.create_model("mnist_cnn", num_classes=3).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, root / "three" / "model.safetensors")
    return root


# Messages that name their flag only with the issue-7 flag-naming patch (pipeline/loader.py,
# pipeline/shards.py, train/setup.py, train/checkpoint.py, train/limit.py); once it is in,
# make this `()` (strict: an unexpected pass fails, so the marks cannot outlive the patch).
needs_flag_patch = ()

BAD = [  # (id, extra argv (D: the good shard folder, O: odd_files), the flag named, a problem word)
    ("unknown method", ["--method", "bogus"], "--method", "invalid choice"),
    ("unknown optimizer", ["--optimizer", "lbfgs"], "--optimizer", "invalid choice"),
    ("non-integer epochs", ["--epochs", "two"], "--epochs", "invalid int"),
    ("unknown flag", ["--no-such-flag"], "--no-such-flag", "unrecognized"),
    pytest.param("unknown model", ["--model", "no_such_net"], "--model", "unknown model", marks=needs_flag_patch),
    ("zero epochs", ["--epochs", "0"], "--epochs", "> 0"),
    ("negative epochs", ["--epochs", "-2"], "--epochs", "> 0"),
    ("zero batch", ["--batch-size", "0"], "--batch-size", "> 0"),
    ("zero lr", ["--lr", "0"], "--lr", "> 0"),
    ("negative workers", ["--workers", "-1"], "--workers", ">= 0"),
    ("skip frac above 1", ["--max-skip-frac", "1.5"], "--max-skip-frac", "[0, 1]"),
    ("gce q", ["--gce-q", "0"], "--gce-q", "(0, 1]"),
    pytest.param("pattern matching no file", ["--data", "D/digits-{000..099}.tar"], "--data", "shard not found",
                 marks=needs_flag_patch),
    pytest.param("missing card", ["--data", "O/lone-000.tar"], "--data", "dataset card not found",
                 marks=needs_flag_patch),
    pytest.param("folder without a card", ["--data", "O/no_card"], "--data", "dataset card",
                 marks=needs_flag_patch),
    ("noise without rate", ["--noise", "uniform"], "--noise", "uniform:P"),
    ("noise rate not a number", ["--noise", "pair:abc"], "--noise", "a number"),
    ("unknown noise kind", ["--noise", "gaussian:0.2"], "--noise", "expected none"),
    ("noise rate above 1", ["--noise", "uniform:1.5"], "--noise", "[0, 1]"),
    ("noise rate below 0", ["--noise", "pair:-0.1"], "--noise", "[0, 1]"),
    ("pair naming a missing class", ["--noise", "pair:0.3", "--noise-pairs", "3>cat"], "--noise-pairs", "no class named"),
    ("pair syntax", ["--noise", "pair:0.3", "--noise-pairs", "3-5"], "--noise-pairs", "SRC>DST"),
    ("noise matrix of the wrong shape", ["--noise", "matrix:O/m.txt"], "--noise", "10x10"),
    ("noise matrix missing", ["--noise", "matrix:O/none.txt"], "--noise", "cannot read"),
    pytest.param("class count differs from --init-from", ["--init-from", "O/three", "--method", "limit"],
                 "--init-from", "3 classes", marks=needs_flag_patch),
    pytest.param("missing --init-from", ["--init-from", "O/none", "--method", "limit"], "--init-from",
                 "no checkpoint", marks=needs_flag_patch),
    pytest.param("missing --resume", ["--resume", "O/none"], "--resume", "no checkpoint", marks=needs_flag_patch),
    pytest.param("--resume of another model", ["--resume", "R", "--model", "mnist_cnn_bn"], "--resume",
                 "--model 'mnist_cnn' -> 'mnist_cnn_bn'", marks=needs_flag_patch),   # checked before the weights load
    ("missing --pretrained", ["--pretrained", "O/none.safetensors"], "--pretrained", "no such file"),
    ("unwritable --out", ["--out", "O/a_file/sub"], "--out", "not writable"),
    ("subset larger than the split", ["--max-train-samples", "100000"], "--max-train-samples", "exceeds"),
    ("fw without a CE model", ["--method", "fw"], "--init-from", "fine-tunes"),
]


@pytest.mark.parametrize("case, extra, flag, problem", BAD, ids=[getattr(b, "values", b)[0] for b in BAD])
def test_bad_command_lines_give_one_line_naming_the_flag(digits, odd_files, clean_run, tmp_path, capsys,
                                                         case, extra, flag, problem):
    (odd_files / "lone-000.tar").write_bytes(b"")
    extra = [a.replace("D/", f"{digits}/").replace("O/", f"{odd_files}/") for a in extra]
    extra = [str(clean_run / "checkpoints" / "last") if a == "R" else a for a in extra]
    argv = ["--data", str(digits), "--model", "mnist_cnn", "--epochs", "1", "--workers", "0",
            "--out", str(tmp_path / "out"), *extra]
    try:
        rc = cli(argv)
    except SystemExit as e:                                # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert "Traceback" not in err[0] and flag in err[0] and problem in err[0], err[0]
    assert not (tmp_path / "out" / "final.json").exists()
