"""make_shards' manifest (NAME.parquet): one row per written sample, from the plan's columns,
written one row group at a time (docs/architecture.md section 8)."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import safe_io
from pipeline.convert.columns import release_memory
from pipeline.shardset import MANIFEST_SCHEMA


MANIFEST_ROWS = 1 << 16          # rows per Parquet row group, built and written one at a time


def manifest_groups(p, results: list[dict]):
    """The manifest, one row per written sample (the plan minus each shard's skips), as Arrow
    tables of whole shards and about MANIFEST_ROWS rows each, for one Parquet row group each:
    the whole manifest never exists in memory (at 10^6 samples it was ~100 MB, and the Parquet
    writer's buffers on top of it)."""
    group, rows = [], 0
    for r in results:
        recs, index = p.splits[r["split"]]
        pos = np.arange(r["start"], r["stop"])
        if r["skipped_index"]:
            pos = pos[~np.isin(index[pos], r["skipped_index"])]
        group.append((recs, index, pos, r))
        rows += len(pos)
        if rows >= MANIFEST_ROWS:
            yield manifest_table(group)
            group, rows = [], 0
    if group or not results:
        yield manifest_table(group)


def manifest_table(parts: list[tuple]) -> pa.Table:
    """One column at a time, straight from the plan's columns (~100 bytes a sample)."""
    sizes = [len(pos) for *_, pos, _ in parts]
    texts = [recs.text_columns(pos) for recs, _, pos, _ in parts]
    strings = lambda k: pa.concat_arrays([t[k] for t in texts]) if parts else pa.array([], pa.string())  # noqa: E731
    ints = lambda get: pa.array(np.concatenate([get(recs, index)[pos] for recs, index, pos, _ in parts])  # noqa: E731
                                if parts else np.zeros(0, np.int64), pa.int64())
    cols = {"key": strings(0),
            "split": repeated([r["split"] for *_, r in parts], sizes),
            "shard": repeated([r["file"] for *_, r in parts], sizes),
            "index": ints(lambda recs, index: index),
            "label": ints(lambda recs, index: recs.labels),
            "clean_label": ints(lambda recs, index: recs.clean),
            "source": strings(1)}
    return pa.table(cols, schema=MANIFEST_SCHEMA)


def write_manifest(p, results: list[dict], path: Path) -> None:
    with safe_io.temp_path(path) as tmp, pq.ParquetWriter(tmp, MANIFEST_SCHEMA) as w:
        for table in manifest_groups(p, results):
            w.write_table(table)
            release_memory()


def repeated(values: list[str], sizes: list[int]) -> pa.Array:
    """values[k] sizes[k] times, without a Python object per row."""
    return pa.array(values, pa.string()).take(pa.array(np.repeat(np.arange(len(values)), sizes)))
