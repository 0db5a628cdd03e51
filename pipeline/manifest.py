"""A dataset card's manifest (NAME.parquet beside it: one row per sample, the columns of
shardset.MANIFEST_SCHEMA), read for training, prediction and review. The card may come from a
stranger, so the file is checked before any column becomes a numpy array: a missing file, a
FIFO, not Parquet, a missing column, an empty cell or an index outside the card's num_indices
is one line naming the file (docs/architecture.md section 7), never an Arrow or numpy
traceback, and never (a negative index) a silently different sample. verify_shards checks a
manifest against its shards in full (pipeline/convert/manifest_check.py)."""
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import safe_io, shardset
from pipeline.shards import DataError

MAX_MANIFEST = 64 << 30      # ~60 bytes a sample on disk: 10^6 samples are ~60 MB
# pyarrow's own errors derive from OSError and ValueError, but also from NotImplementedError
# (an unknown codec), TypeError and MemoryError: ArrowException covers them all
ARROW_ERRORS = (OSError, ValueError, pa.ArrowException)


def column_names(path: Path) -> list[str]:
    """The column names of a card's manifest (NAME.parquet beside it), or one line saying why
    it cannot be read: it may come with a stranger's card (a missing file, a FIFO, not Parquet)."""
    if not Path(path).exists():
        raise DataError(f"manifest not found: {path} (make_shards writes it beside the card)")
    safe_io.check_regular(path, MAX_MANIFEST, "manifest")     # a FIFO, a device, a folder: one line
    try:
        return pq.read_schema(path).names
    except ARROW_ERRORS as e:
        raise _unreadable(path, e) from None


def read(path: Path, columns: list[str], num_indices: int | None = None, n_classes: int | None = None):
    """`columns` of a card's manifest as an Arrow table, checked before any of them becomes a
    numpy array: an empty cell or an index out of range would otherwise surface as an Arrow
    or numpy traceback, or (a negative index) silently pick another sample."""
    _require(path, columns)
    try:
        table = pq.read_table(path, columns=columns)
    except ARROW_ERRORS as e:
        raise _unreadable(path, e) from None
    check(table, path, num_indices, n_classes)
    return plain(table)


def iter_batches(path: Path, columns: list[str], batch_size: int = 65536, num_indices: int | None = None):
    """The same, batch by batch, for readers that must not hold a million rows' strings: read
    page by page (make_shards writes one row group per million samples, which decoded whole
    costs ~100 bytes a row), single-threaded."""
    _require(path, columns)
    try:
        f = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False)
        for batch in f.iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
            check(batch, path, num_indices)
            yield plain(batch)
    except DataError:
        raise
    except ARROW_ERRORS as e:
        raise _unreadable(path, e) from None


def _require(path, columns: list[str]) -> None:
    names = column_names(path)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"manifest {path}: no column {missing[0]!r} (it has {', '.join(names)})")


def _unreadable(path, e: Exception) -> DataError:
    return DataError(f"manifest {path}: not a readable Parquet file ({type(e).__name__})")


def _text(t: pa.DataType) -> bool:
    """A string column, or dictionary-encoded strings (pandas' categoricals write those)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def plain(t):
    """The table or batch with dictionary-encoded columns decoded: the readers take plain
    strings, as make_shards writes them."""
    if not any(pa.types.is_dictionary(f.type) for f in t.schema):
        return t
    return t.cast(pa.schema([pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f
                             for f in t.schema]))


def check(t, path, num_indices: int | None = None, n_classes: int | None = None) -> None:
    """A manifest table or record batch: each column of its kind (shardset.MANIFEST_SCHEMA), no
    empty cells, `index` in [0, num_indices) and `label` in [0, n_classes) where those are given."""
    for field in t.schema:
        want = shardset.MANIFEST_SCHEMA.field(field.name).type if field.name in shardset.MANIFEST_SCHEMA.names else None
        ok = want is None or (pa.types.is_integer(field.type) if pa.types.is_integer(want) else _text(field.type))
        if not ok:
            raise DataError(f"manifest {path}: column {field.name!r} has the wrong type ({field.type})")
        if field.name != "source" and t.column(field.name).null_count:
            raise DataError(f"manifest {path}: column {field.name!r} has {t.column(field.name).null_count} empty cells")
    for name, top, what in (("index", num_indices, "the card's num_indices"), ("label", n_classes, "classes")):
        if name in t.schema.names and len(t):
            lo, hi = (v.as_py() for v in pc.min_max(t.column(name)).values())
            if lo < 0:
                raise DataError(f"manifest {path}: {name} {lo} is negative")
            if top is not None and hi >= top:
                raise DataError(f"manifest {path}: {name} {hi} is not below {top}, {what} "
                                "(a manifest of another conversion?)")
