"""tools/predict.py's output files, each written whole or not at all (pipeline.safe_io):
predictions.parquet and predictions.csv (one row per sample, the same columns), report.json,
confusion.csv, confusion.png, reliability.png (with labels) and summary.json."""
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from pipeline import safe_io
from pipeline.csv_cells import FORMULA_START
from pipeline.manifest import read as read_manifest
from pipeline.shards import DataError
from train.predict import evaluation
from train.predict.infer import Predictions

FORMULA_CELL = "^'*[" + "".join("\\" + c if c in "-" else c for c in FORMULA_START) + "]"


def table(p: Predictions, classes: list[str], ids: dict[str, pa.Array]) -> pa.Table:
    """`ids` (key + shard, or path) first, then label and clean_label (-1: unknown; shards only),
    then for j = 1..k: predJ (class id), nameJ (class name), probJ (softmax probability)."""
    names = np.asarray(classes, dtype=object)
    cols = dict(ids)
    cols["index"] = pa.array(p.index)
    if "key" in ids:
        cols["label"], cols["clean_label"] = pa.array(p.label), pa.array(p.clean)
    for j in range(p.top_class.shape[1]):
        cls = p.top_class[:, j]
        cols[f"pred{j + 1}"] = pa.array(cls)
        cols[f"name{j + 1}"] = pa.array(names[cls].tolist() if len(cls) else [], pa.string())
        cols[f"prob{j + 1}"] = pa.array(p.top_prob[:, j])
    return pa.table(cols)


def shard_ids(p: Predictions, manifest: Path, num_indices: int) -> dict[str, pa.Array]:
    """key and shard of each predicted sample, from the manifest beside the card (by index)."""
    return manifest_ids(p.index, manifest, num_indices)


def manifest_ids(index: np.ndarray, manifest: Path, num_indices: int) -> dict[str, pa.Array]:
    """{"key", "shard"} of the samples at global `index`, in that order, from a manifest whose
    indices lie below the card's num_indices (the lookup below is that long)."""
    m = read_manifest(manifest, ["key", "index", "shard"], num_indices)
    known = m.column("index").to_numpy()
    row_of = np.full(int(max(known.max(initial=-1), index.max(initial=-1))) + 1, -1, dtype=np.int64)
    row_of[known] = np.arange(len(known))
    rows = row_of[index]
    if (rows < 0).any():
        raise DataError(f"manifest {manifest} lacks {int((rows < 0).sum())} of the samples "
                        f"(index {int(index[rows < 0][0])}, ...)")
    return {"key": m.column("key").take(pa.array(rows)), "shard": m.column("shard").take(pa.array(rows))}


def write_predictions(t: pa.Table, out: Path) -> None:
    """Parquet as it is; the CSV (which people open in spreadsheets) with every text cell
    neutralized by pipeline.csv_cells' rule, done column-wise (pyarrow's writer: 10^6 rows
    in seconds, where csv.DictWriter takes a minute)."""
    with safe_io.temp_path(out / "predictions.parquet") as tmp:
        pq.write_table(t, tmp)
    with safe_io.temp_path(out / "predictions.csv") as tmp:
        pacsv.write_csv(neutralized(t), tmp)


def neutralized(t: pa.Table) -> pa.Table:
    """csv_cells.neutralize on every string column: a cell matching ^'*[=+-@ TAB CR] gets a
    leading quote (the same bijection, so csv_cells.restore reads it back)."""
    cols = []
    for col in t.columns:
        if pa.types.is_string(col.type):
            hit = pc.match_substring_regex(col, FORMULA_CELL)
            col = pc.if_else(hit, pc.binary_join_element_wise("'", col, ""), col)
        cols.append(col)
    return pa.table(cols, names=t.column_names)


def write_report(report: dict, classes: list[str], out: Path) -> None:
    cm = np.asarray(report["confusion"])
    safe_io.write_json(out / "report.json", report)
    safe_io.write_text(out / "confusion.csv", evaluation.confusion_csv(cm, classes))
    safe_io.savefig(evaluation.confusion_figure(cm, classes), out / "confusion.png", dpi=120)
    safe_io.savefig(evaluation.reliability_figure(report["calibration"]), out / "reliability.png", dpi=120)
