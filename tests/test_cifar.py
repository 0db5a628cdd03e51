"""Issue 10: the CIFAR protocol on generated 32x32 data in CIFAR-10's class layout, ready for the
real data: CIFAR exported as images -> `make_shards.py imagefolder --recipe cifar` -> a card
with the CIFAR recipe -> `train/limit.py --model cifar_resnet34` with pair noise by class name.
CIFAR-N's human labels arrive as a `table` (path, label, clean_label, split)."""
import csv
import json
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.augment import AugSpec, spec_from_card, train_image
from pipeline.noise import CIFAR10_PAIRS, parse_noise, transition_matrix
from tools import make_shards
from train.limit import cli

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_like(path, k: int, seed: int):
    """A 32x32 RGB PNG whose colour and stripe direction depend on the class k."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32]
    stripes = ((xx if k % 2 else yy) // (2 + k // 2)) % 2
    base = np.array([(37 * k) % 256, (91 * k + 40) % 256, (150 + 23 * k) % 256])
    img = base * (0.6 + 0.4 * stripes[..., None]) + rng.integers(-20, 21, (32, 32, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path)
    return path


def export(root, n_train: int, n_test: int):
    """CIFAR as most exporters write it: root/{train,test}/CLASS/NNNN.png."""
    for s, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        for k, name in enumerate(CIFAR10):
            for i in range(n):
                cifar_like(root / split / name / f"{i:04d}.png", k, seed=100_000 * s + 1000 * k + i)
    return root


@pytest.fixture(scope="module")
def cifar_shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cifar")
    src = export(tmp / "cifar10", n_train=10, n_test=3)
    out = tmp / "shards"
    assert make_shards.main(["imagefolder", str(src), "--out", str(out), "--name", "cifar10",
                             "--val-fraction", "0.2", "--recipe", "cifar", "--shard-size", "40"]) == 0
    return out


def test_imagefolder_export_gets_the_cifar_card(cifar_shards):
    card = json.loads((cifar_shards / "cifar10.json").read_text())
    assert card["classes"] == CIFAR10                 # sorted folder names = CIFAR-10's label order
    assert card["augment"] == {"size": 32, "crop": "pad_random", "pad": 4, "flip": True}
    assert card["options"]["recipe"] == "cifar"
    assert {k: v["count"] for k, v in card["splits"].items()} == {"train": 80, "val": 20, "test": 30}
    spec = spec_from_card(card)
    assert spec == AugSpec(size=32, crop="pad_random", pad=4, flip=True, channels=3)
    # pad 4 + random 32 crop (+ flip): 32x32 out, a window of the zero-padded 40x40 image
    img = np.asarray(Image.open(cifar_shards.parent / "cifar10/train/cat/0000.png"))
    padded = np.pad(img, ((4, 4), (4, 4), (0, 0)))
    data = (cifar_shards.parent / "cifar10/train/cat/0000.png").read_bytes()
    for seed in range(8):
        out = np.asarray(train_image(data, spec, random.Random(seed)))
        if out.shape[0] == 3:                              # the backends' CHW layout -> HWC
            out = out.transpose(1, 2, 0)
        assert out.shape == (32, 32, 3)
        assert any((padded[t:t + 32, l:l + 32] == o).all() for t in range(9) for l in range(9)
                   for o in (out, out[:, ::-1]))
    # pair noise by class name: truck->automobile, bird->airplane, deer->horse, cat->dog
    t = transition_matrix(parse_noise("pair:0.4"), card["classes"])
    for s, d in CIFAR10_PAIRS.items():
        assert t[CIFAR10.index(s), CIFAR10.index(d)] == pytest.approx(0.4)
    assert np.trace(t) == pytest.approx(10 - 4 * 0.4)


def test_without_the_recipe_an_image_folder_keeps_imagenets(tmp_path):
    src = export(tmp_path / "c", n_train=1, n_test=0)
    assert make_shards.main(["imagefolder", str(src / "train"), "--out", str(tmp_path / "s")]) == 0
    assert json.loads((tmp_path / "s/imagefolder.json").read_text())["augment"]["crop"] == "random_resized"


def test_cifar_n_label_file_as_a_table(tmp_path):
    """CIFAR-N: the human label (e.g. worse_label) as `label`, CIFAR-10's as `clean_label`,
    integer ids into --classes; the test rows carry the clean label."""
    src = export(tmp_path / "cifar10", n_train=2, n_test=1)
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "test"):
        for k, name in enumerate(CIFAR10):
            for p in sorted((src / split / name).glob("*.png")):
                human = int(rng.integers(0, 10)) if split == "train" and rng.random() < 0.4 else k
                rows.append({"path": p.relative_to(src).as_posix(), "label": human, "clean_label": k, "split": split})
    with open(src / "cifar10n_worse.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "clean_label", "split"])
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "shards"
    assert make_shards.main(["table", str(src / "cifar10n_worse.csv"), "--out", str(out), "--name", "cifar10n",
                             "--classes", ",".join(CIFAR10), "--recipe", "cifar", "--val-fraction", "0.2"]) == 0
    card = json.loads((out / "cifar10n.json").read_text())
    assert card["classes"] == CIFAR10 and card["augment"]["crop"] == "pad_random"
    man = pq.read_table(out / "cifar10n.parquet").to_pylist()
    by_src = {r["source"].split("cifar10/", 1)[1]: r for r in man}
    for r in rows:
        got = by_src[r["path"]]
        assert (got["label"], got["clean_label"]) == (r["label"], r["clean_label"])


def test_cifar_resnet34_run_with_pair_noise_by_class_name(cifar_shards, tmp_path):
    """One short run of the paper's CIFAR-10 pair-noise row (CE + Laplace gradient noise, to
    cover CE + LN on the CIFAR network too): one epoch on 80 generated images."""
    out = tmp_path / "run"
    assert cli(["--data", str(cifar_shards), "--model", "cifar_resnet34", "--epochs", "1",
                "--batch-size", "40", "--workers", "0", "--noise", "pair:0.4",
                "--grad-noise", "laplace", "--grad-noise-sigma", "0.5", "--out", str(out)]) == 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["samples_seen"] == 80
    assert row["train_acc_flipped"] is not None          # some train labels were flipped by pair noise
    assert row["test_acc"] is not None and row["val_acc"] is not None
    final = json.loads((out / "final.json").read_text())
    assert final["epochs"] == 1
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["model"], cfg["noise"], cfg["grad_noise"]) == ("cifar_resnet34", "pair:0.4", "laplace")
