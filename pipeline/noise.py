"""Label noise as a function of the sample index, so that every backend, worker, rank and
resume sees the same given label for the same sample.

Every noise model is a KxK row-stochastic transition matrix T (T[c, k] = P(given k | clean c)).
One uniform draw u[index] per sample, from a generator seeded by --noise-seed, picks the given
label by inverse CDF of row T[label]: one code path for uniform, pair and matrix noise."""
import io
from dataclasses import dataclass

import numpy as np
import torch

from pipeline import safe_io
from pipeline.shards import DataError

CIFAR10_PAIRS = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog"}


@dataclass(frozen=True)
class NoiseSpec:
    kind: str = "none"      # none | uniform | pair | matrix
    p: float = 0.0          # flip probability (uniform, pair)
    path: str = ""          # KxK matrix file (matrix)


def parse_noise(text: str) -> NoiseSpec:
    """`none`, `uniform:P`, `pair:P` or `matrix:FILE`."""
    kind, _, arg = text.partition(":")
    if kind == "none" and not arg:
        return NoiseSpec()
    if kind == "matrix" and arg:
        return NoiseSpec("matrix", path=arg)
    if kind in ("uniform", "pair"):
        try:
            p = float(arg)
        except ValueError:
            raise DataError(f"--noise {text!r}: expected {kind}:P with P a number") from None
        if not 0.0 <= p <= 1.0:
            raise DataError(f"--noise {text!r}: the rate must lie in [0, 1]")
        return NoiseSpec(kind, p)
    raise DataError(f"--noise {text!r}: expected none, uniform:P, pair:P or matrix:FILE")


def parse_pairs(text: str, classes: list[str]) -> dict[int, int]:
    """`"cat>dog,bird>airplane"` -> {src: dst} by class index; empty text means the CIFAR-10
    pairs when the classes are CIFAR-10's."""
    if not text:
        if not set(CIFAR10_PAIRS) | set(CIFAR10_PAIRS.values()) <= set(classes):
            raise DataError("--noise pair:P needs --noise-pairs SRC>DST,... for these classes")
        pairs = CIFAR10_PAIRS
    else:
        pairs = dict(item.split(">", 1) for item in text.split(",") if ">" in item)
        if len(pairs) != len(text.split(",")):
            raise DataError(f"--noise-pairs {text!r}: expected SRC>DST,SRC>DST,...")
    index = {name: i for i, name in enumerate(classes)}
    for name in (*pairs, *pairs.values()):
        if name not in index:
            raise DataError(f"--noise-pairs: no class named {name!r}")
    return {index[s]: index[d] for s, d in pairs.items()}


def transition_matrix(spec: NoiseSpec, classes: list[str], pairs: str = "") -> np.ndarray:
    k = len(classes)
    if spec.kind == "none":
        return np.eye(k)
    if spec.kind == "uniform":  # the label becomes one of the *other* K-1 classes with prob. p
        return (1 - spec.p) * np.eye(k) + spec.p / (k - 1) * (1 - np.eye(k))
    if spec.kind == "pair":
        t = np.eye(k)
        for src, dst in parse_pairs(pairs, classes).items():
            t[src, src], t[src, dst] = 1 - spec.p, spec.p
        return t
    return load_matrix(spec.path, k)


MAX_MATRIX = 256 << 20       # K x K numbers as text: K = 5,000 is ~200 MB


def load_matrix(path: str, k: int) -> np.ndarray:
    """A K x K row-stochastic matrix from a text file, which may be named by a received
    config.json: a regular file within MAX_MATRIX only, and errors never quote it."""
    try:
        raw = safe_io.read_capped(path, MAX_MATRIX, "--noise matrix")
    except DataError as e:
        raise DataError(f"cannot read {e}") from None
    try:
        t = np.loadtxt(io.StringIO(raw.decode("utf-8")), delimiter="," if path.endswith(".csv") else None, ndmin=2)
    except ValueError:             # UnicodeDecodeError too; numpy's message quotes the bad cell
        raise DataError(f"--noise matrix:{path}: not a table of numbers") from None
    if t.shape != (k, k) or (t < 0).any() or not np.allclose(t.sum(1), 1, atol=1e-6):
        raise DataError(f"--noise matrix:{path}: need a {k}x{k} row-stochastic matrix, got shape {t.shape}")
    return t


class NoiseTable:
    """Given label = f(clean label, u[index]); u drawn once for all `n_total` indices."""

    def __init__(self, matrix: np.ndarray, n_total: int, seed: int):
        self.matrix = torch.as_tensor(matrix, dtype=torch.float64)
        self.cdf = self.matrix.cumsum(1)
        self.u = torch.from_numpy(np.random.default_rng(seed).random(n_total))
        self.identity = bool(torch.equal(self.matrix, torch.eye(len(matrix), dtype=torch.float64)))

    def apply(self, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """labels, index: (B,) int64 -> (B,) int64 given labels."""
        if self.identity:
            return labels
        u = self.u[index].unsqueeze(1)                         # (B, 1)
        new = (self.cdf[labels] <= u).sum(1)                   # inverse CDF, (B,)
        return new.clamp_(max=self.cdf.shape[1] - 1).to(labels.dtype)


class FixedLabels:
    """The given labels after --noise, then a reviewer's fixes by sample index
    (pipeline/fixes.py): noise first, since it stands for the dataset's own label noise in an
    experiment and a person reviews the labels a run showed them; then the fixes. Same
    interface as NoiseTable (apply, matrix: the synthetic noise's)."""

    def __init__(self, noise: NoiseTable, relabel: dict[int, int], n_total: int):
        self.noise, self.matrix = noise, noise.matrix
        self.table = torch.full((n_total,), -1, dtype=torch.int64)   # -1: no fix (8 bytes a sample)
        if relabel:
            self.table[torch.tensor(list(relabel), dtype=torch.int64)] = torch.tensor(list(relabel.values()))

    def apply(self, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        given = self.noise.apply(labels, index)
        fixed = self.table[index]
        return torch.where(fixed >= 0, fixed, given).to(labels.dtype)
