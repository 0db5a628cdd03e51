"""Tiny real shard sets for tests: synthetic MNIST-layout digits (a bright block whose
position encodes the class, on a noisy background) converted by tools/make_shards.py."""
import gzip
import struct
from pathlib import Path

import numpy as np

from tools import make_shards


def write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    header = bytes([0, 0, 8, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


def digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = rng.integers(0, 60, (n, 28, 28))
    for i, k in enumerate(labels):
        r, c = 3 + (k // 5) * 12 + rng.integers(-2, 3), 2 + (k % 5) * 5 + rng.integers(-1, 2)
        images[i, r:r + 8, c:c + 4] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def make_digit_idx(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        x, y = digits(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", y)
    return folder


def make_digit_shards(root: Path, n_train: int = 600, n_test: int = 200, shard_size: int = 100,
                      name: str = "digits") -> Path:
    """-> the shard folder, holding NAME-000.tar..., NAME-val-*, NAME-test-*, NAME.json."""
    src = make_digit_idx(root / "idx", n_train, n_test)
    out = root / "shards"
    assert make_shards.main(["mnist", str(src), "--out", str(out), "--name", name,
                             "--shard-size", str(shard_size)]) == 0
    return out


def train_argv(data, out, *extra) -> list[str]:
    """train/limit.py's flags for one quick epoch of mnist_cnn on tiny shards, in-process."""
    return ["--data", str(data), "--model", "mnist_cnn", "--epochs", "1", "--batch-size", "64",
            "--workers", "0", "--out", str(out), *extra]
