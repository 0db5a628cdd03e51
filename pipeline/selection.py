"""Which train samples an epoch reads: all of them, a seeded subset (--max-train-samples) or a
class-balanced draw (--balance), behind one interface, `Selection`. Everything comes from
the manifest's columns as numpy arrays (about 20 bytes a train sample, no Python object per
sample), so choosing costs what is chosen, and so does reading: `keys(epoch)` names the
members a reader needs per shard, and pipeline.cpu seeks past the rest of a local shard
(docs/architecture.md section 3)."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import torch

from pipeline.manifest import read as read_manifest
from pipeline.shards import DataError

# Below this fraction of a split, a reader is given the keys it needs and seeks past the rest
# of each local shard; above it, reading through costs about the same and needs no key sets.
SEEK_BELOW = 0.5


@dataclass(frozen=True)
class TrainRows:
    """The manifest's train rows as columns, in manifest order."""
    index: np.ndarray           # (n,) int64 global sample index
    shard: np.ndarray           # (n,) int32 position in `shard_names`
    shard_names: tuple          # the manifest's shard file names
    label: np.ndarray           # (n,) int64 label in the shards (before --noise)
    keys: pa.Array              # (n,) sample keys, kept in Arrow: Python strings only for chosen rows

    @classmethod
    def read(cls, manifest: Path, num_indices: int, n_classes: int) -> "TrainRows":
        t = read_manifest(manifest, ["split", "shard", "index", "label", "key"], num_indices, n_classes)
        t = t.filter(pa.compute.equal(t["split"], "train"))
        shard = t.column("shard").combine_chunks().dictionary_encode()
        return cls(t.column("index").to_numpy().astype(np.int64), shard.indices.to_numpy().astype(np.int32),
                   tuple(shard.dictionary.to_pylist()), t.column("label").to_numpy().astype(np.int64),
                   t.column("key").combine_chunks())

    def sizes(self, mask: np.ndarray) -> dict[str, int]:
        """Chosen samples per shard name (shards with none chosen at 0)."""
        counts = np.bincount(self.shard[mask[self.index]], minlength=len(self.shard_names))
        return dict(zip(self.shard_names, counts.tolist()))

    def keys_by_shard(self, mask: np.ndarray) -> dict[str, frozenset]:
        chosen = np.flatnonzero(mask[self.index])
        keys = self.keys.take(pa.array(chosen)).to_pylist()
        out: dict[str, set] = {name: set() for name in self.shard_names}
        for code, key in zip(self.shard[chosen].tolist(), keys):
            out[self.shard_names[code]].add(key)
        return {name: frozenset(ks) for name, ks in out.items()}


class Selection:
    """All train samples: no mask. Subclasses choose; every method is a function of the epoch."""

    def mask(self, epoch: int) -> np.ndarray | None:
        """bool over all indices (only train indices matter), or None: every sample."""
        return None

    def count(self, epoch: int, total: int) -> int:
        m = self.mask(epoch)
        return total if m is None else int(m.sum())

    def sizes(self, epoch: int) -> dict[str, int] | None:
        """Train samples per shard this epoch, or None: the card's counts."""
        return None

    def keys(self, epoch: int) -> dict[str, frozenset] | None:
        """Keys to read per train shard name, or None: read every sample."""
        return None


class Masked(Selection):
    """A fixed or per-epoch choice by index, with the manifest's rows to size and key it."""

    def __init__(self, rows: TrainRows):
        self.rows, self._keys = rows, (None, None)

    def sizes(self, epoch: int) -> dict[str, int]:
        return self.rows.sizes(self.mask(epoch))

    def keys(self, epoch: int) -> dict[str, frozenset] | None:
        if self.count(epoch, 0) >= SEEK_BELOW * len(self.rows.index):
            return None
        if self._keys[0] != self._epoch_key(epoch):
            self._keys = (self._epoch_key(epoch), self.rows.keys_by_shard(self.mask(epoch)))
        return self._keys[1]

    def _epoch_key(self, epoch: int):
        return epoch


class Subset(Masked):
    """--max-train-samples N: a seeded choice of N train samples, the same every epoch, rank,
    backend and resume (the same draw as before this module: manifest order, one choice)."""

    def __init__(self, rows: TrainRows, n_indices: int, n: int, seed: int, fixed: np.ndarray | None = None):
        super().__init__(rows)
        if fixed is not None:
            self._mask = fixed
            return
        if n > len(rows.index):
            raise DataError(f"--max-train-samples {n} exceeds the {len(rows.index)} train samples")
        self._mask = np.zeros(n_indices, dtype=bool)
        self._mask[np.random.default_rng(seed).choice(rows.index, n, replace=False)] = True

    def mask(self, epoch: int) -> np.ndarray:
        return self._mask

    def _epoch_key(self, epoch: int):
        return 0                                    # the same keys every epoch


class Balanced(Masked):
    """--balance N: each epoch, N train samples drawn class-balanced from the *given* labels
    (N/K per class without replacement; a class with fewer samples gives all it has), as the
    DivideMix and ELR Clothing1M recipes do; within `within` (a subset or drops) when given.
    A function of (seed, epoch) only, so DDP ranks and resumed runs agree."""

    def __init__(self, rows: TrainRows, n_indices: int, n_classes: int, n: int, seed: int, noise,
                 within: np.ndarray | None = None):
        super().__init__(rows)
        given = noise.apply(torch.as_tensor(rows.label), torch.as_tensor(rows.index)).numpy()
        use = within[rows.index] if within is not None else np.ones(len(rows.index), dtype=bool)
        self.by_class = [rows.index[use & (given == c)] for c in range(n_classes)]
        self.per_class, self.seed, self.n_total = max(1, n // n_classes), seed, n_indices
        self._cache: tuple = (None, None)

    def mask(self, epoch: int) -> np.ndarray:
        if self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            mask = np.zeros(self.n_total, dtype=bool)
            for members in self.by_class:
                mask[rng.choice(members, min(self.per_class, len(members)), replace=False)] = True
            self._cache = (epoch, mask)
        return self._cache[1]
