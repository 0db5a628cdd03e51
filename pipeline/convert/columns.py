"""One split's samples as columns, for tools/make_shards.py (docs/architecture.md section 8).

A conversion of 10^6 samples held as a list of (key, label, clean, path) tuples costs ~400 bytes
a sample in Python objects, and that list is what made make_shards' memory grow with the
dataset (issue 16). Here names are Arrow strings (their bytes plus a 4-byte offset), labels
int32 arrays, in-memory images (MNIST) one uint8 array. A layout whose key and path both
follow from one name (Clothing1M: key = make_key(name), path = root/name) keeps only the
names, and each key and path is made when it is read: ~(len(name) + 12) bytes a sample. It
still reads as a sequence of the same tuples, made a chunk at a time, so the code that writes
shards does not change."""
import ctypes
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.records import make_key

CHUNK = 65536      # tuples made at a time while iterating: bounded, whatever the split's size


class Records(Sequence):
    """(key, label, clean_label, source) per sample; source a file path (str) or an image array.

    keys None: each key is make_key(name) of its name in `sources`. root set: `sources` are
    names relative to it, and a sample's path is str(Path(root) / name)."""

    def __init__(self, keys, labels, clean, sources, root: str | None = None):
        self._keys = keys               # an Array or a ChunkedArray (no combined copy of 10^6 strings)
        self.labels = np.asarray(labels, dtype=np.int32)
        self.clean = np.asarray(clean, dtype=np.int32)
        self.sources = sources
        self.root = root
        if not (len(self.labels) == len(self.clean) == len(self.sources)
                and (keys is None or len(keys) == len(self.labels))):
            raise ValueError("Records: columns of different lengths")

    @classmethod
    def from_tuples(cls, recs) -> "Records":
        """From a list of tuples (small sources; the columnar readers build columns directly)."""
        recs = list(recs)
        keys = pa.array([r[0] for r in recs], pa.string())
        labels = np.array([r[1] for r in recs], np.int32)
        clean = np.array([r[2] for r in recs], np.int32)
        if recs and not isinstance(recs[0][3], str):
            sources = np.stack([r[3] for r in recs])
        else:
            sources = pa.array([r[3] for r in recs], pa.string())
        return cls(keys, labels, clean, sources)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.sources, np.ndarray)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step == 1:                          # zero-copy views: no index array the split's size
                return self._slice(start, max(start, stop))
            return self.take(np.arange(start, stop, step))
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        (key,), (source,) = self._texts(i, i + 1)
        return key, int(self.labels[i]), int(self.clean[i]), source

    def __iter__(self):
        for start in range(0, len(self), CHUNK):
            stop = min(start + CHUNK, len(self))
            keys, sources = self._texts(start, stop)
            yield from zip(keys, self.labels[start:stop].tolist(), self.clean[start:stop].tolist(), sources)

    def _texts(self, start: int, stop: int) -> tuple[list, list]:
        """Keys and sources of rows start..stop, made from the names where they are derived."""
        if self.in_memory:
            return self._keys.slice(start, stop - start).to_pylist(), self.sources[start:stop]
        names = self.sources.slice(start, stop - start).to_pylist()
        keys = (self._keys.slice(start, stop - start).to_pylist() if self._keys is not None
                else [make_key(n) for n in names])
        if self.root is not None:
            root = Path(self.root)
            names = [str(root / n) for n in names]
        return keys, names

    def iter_keys(self):
        """Every key, a chunk at a time (nothing the size of the split)."""
        for start in range(0, len(self), CHUNK):
            yield from self._texts(start, min(start + CHUNK, len(self)))[0]

    @property
    def keys(self) -> pa.Array:
        """The key column (made whole when derived: for small uses, e.g. --label-fixes' lookup)."""
        return self._keys if self._keys is not None else pa.array(list(self.iter_keys()), pa.string())

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(_same(a, b) for a, b in zip(self, other))

    def _slice(self, start: int, stop: int) -> "Records":
        n = stop - start
        sources = self.sources[start:stop] if self.in_memory else self.sources.slice(start, n)
        keys = None if self._keys is None else self._keys.slice(start, n)
        return Records(keys, self.labels[start:stop], self.clean[start:stop], sources, self.root)

    def take(self, positions) -> "Records":
        positions = np.asarray(positions, dtype=np.int64)
        sources = self.sources[positions] if self.in_memory else self.sources.take(pa.array(positions))
        keys = None if self._keys is None else self._keys.take(pa.array(positions))
        return Records(keys, self.labels[positions], self.clean[positions], sources, self.root)

    def with_labels(self, labels: np.ndarray) -> "Records":
        return Records(self._keys, labels, self.clean, self.sources, self.root)

    def text_columns(self, positions) -> tuple[pa.Array, pa.Array]:
        """The manifest's key and source columns at `positions` (source '' for in-memory images)."""
        part = self.take(positions)
        keys, sources = part._texts(0, len(part))
        return (pa.array(keys, pa.string()),
                pa.array([""] * len(part) if part.in_memory else sources, pa.string()))


def _same(a: tuple, b: tuple) -> bool:
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y for x, y in zip(a, b))


def as_records(recs) -> Records:
    return recs if isinstance(recs, Records) else Records.from_tuples(recs)


# glibc keeps what the reading of a big source frees: after the first large free it raises its
# mmap threshold, so later large buffers (Arrow's) come from the heap and stay resident, and the
# free pages left inside the heap by ~10^6 short-lived strings are not given back either. A
# fixed threshold (mallopt) and malloc_trim after each big step return them. Measured on
# synth_clothing --n 1000000, RSS after reading the source: 274 MB -> 141 MB (the columns
# themselves are 65 MB). Elsewhere than glibc both are skipped.
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def fix_mmap_threshold() -> None:
    if (libc := _libc()) is not None:
        libc.mallopt(-3, 256 << 10)               # M_MMAP_THRESHOLD, bytes


def release_memory() -> None:
    if (libc := _libc()) is not None:
        libc.malloc_trim(0)
