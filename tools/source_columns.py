"""One split's samples as columns, for tools/make_shards.py (docs/architecture.md section 5).

A conversion of 10^6 samples held as a list of (key, label, clean, path) tuples costs ~400 bytes
a sample in Python objects, and that list is what made make_shards' memory grow with the
dataset (issue 16). Here keys and paths are Arrow strings (their bytes plus a 4-byte offset),
labels int32 arrays, in-memory images (MNIST) one uint8 array: ~(len(key) + len(path) + 16)
bytes a sample. It still reads as a sequence of the same tuples, made one at a time, so the
code that writes shards does not change."""
import ctypes
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

CHUNK = 65536      # tuples made at a time while iterating: bounded, whatever the split's size


class Records(Sequence):
    """(key, label, clean_label, source) per sample; source a file path (str) or an image array."""

    def __init__(self, keys: pa.Array, labels, clean, sources):
        self.keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        self.labels = np.asarray(labels, dtype=np.int32)
        self.clean = np.asarray(clean, dtype=np.int32)
        self.sources = sources.combine_chunks() if isinstance(sources, pa.ChunkedArray) else sources
        if not len(self.keys) == len(self.labels) == len(self.clean) == len(self.sources):
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
            return self.take(np.arange(len(self))[i])
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        source = self.sources[i] if self.in_memory else self.sources[i].as_py()
        return self.keys[i].as_py(), int(self.labels[i]), int(self.clean[i]), source

    def __iter__(self):
        for start in range(0, len(self), CHUNK):
            stop = min(start + CHUNK, len(self))
            keys = self.keys.slice(start, stop - start).to_pylist()
            sources = (self.sources[start:stop] if self.in_memory
                       else self.sources.slice(start, stop - start).to_pylist())
            yield from zip(keys, self.labels[start:stop].tolist(), self.clean[start:stop].tolist(), sources)

    def __eq__(self, other) -> bool:
        if not isinstance(other, Sequence) or len(other) != len(self):
            return False
        return all(_same(a, b) for a, b in zip(self, other))

    def take(self, positions) -> "Records":
        positions = np.asarray(positions, dtype=np.int64)
        sources = self.sources[positions] if self.in_memory else self.sources.take(pa.array(positions))
        return Records(self.keys.take(pa.array(positions)), self.labels[positions], self.clean[positions], sources)

    def with_labels(self, labels: np.ndarray) -> "Records":
        return Records(self.keys, labels, self.clean, self.sources)

    def source_texts(self) -> pa.Array:
        """The manifest's source column: paths, or '' for in-memory images."""
        return pa.array([""] * len(self), pa.string()) if self.in_memory else self.sources


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
