"""A sample's label-noise score, the scores of a split as columns and the ranking written
as label_scores.parquet (docs/architecture.md section 2: large = suspicious)."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from pipeline import manifest as manifests, safe_io
from pipeline.shards import DataError

SCHEMA = pa.schema([("key", pa.string()), ("index", pa.int64()), ("shard", pa.string()),
                    ("label", pa.int64()), ("clean_label", pa.int64()), ("score", pa.float32()),
                    ("rank", pa.int64()), ("classifier_pred", pa.int64()), ("predictor_pred", pa.int64())])
DTYPES = {"index": np.int64, "label": np.int32, "clean": np.int32, "score": np.float32,
          "classifier_pred": np.int32, "predictor_pred": np.int32}


def label_scores(aux_or_logits: torch.Tensor, labels: torch.Tensor, norm: str) -> torch.Tensor:
    """Label-noise score per sample: ||onehot(y) - softmax(r(x))|| (L2 for "mse", L1 for
    "mae"); large means the label disagrees with what the predictor expects."""
    err = F.one_hot(labels, aux_or_logits.shape[1]).float() - aux_or_logits.float().softmax(1)
    return err.square().sum(1).sqrt() if norm == "mse" else err.abs().sum(1)


@dataclass
class Scores:
    """Numeric columns only (DTYPES: 28 bytes a row); keys, shards and paths stay in the
    manifest and are joined chunk by chunk when writing. label = given (after the run's
    noise); clean and predictor_pred are -1 where unknown / without a predictor."""
    index: np.ndarray
    label: np.ndarray
    clean: np.ndarray
    score: np.ndarray
    classifier_pred: np.ndarray
    predictor_pred: np.ndarray

    def __len__(self):
        return len(self.index)


class Collector:
    """Batches -> one Scores, in columns that grow by doubling (no per-batch chunk lists, no
    final concatenation: peak = the columns themselves, or 1.5x during a growth)."""

    def __init__(self, capacity: int = 0):
        self.n = 0
        self.cols = {k: np.empty(max(capacity, 1024), dt) for k, dt in DTYPES.items()}

    def add(self, **cols):
        m = len(cols["index"])
        if self.n + m > len(self.cols["index"]):
            size = max(2 * len(self.cols["index"]), self.n + m)
            self.cols = {k: np.resize(a, size) for k, a in self.cols.items()}
        for k, v in cols.items():
            self.cols[k][self.n:self.n + m] = v.cpu().numpy() if torch.is_tensor(v) else v
        self.n += m

    def result(self) -> Scores:
        return Scores(**{k: a[:self.n] for k, a in self.cols.items()})


def score_outputs(out, given, net: str, norm: str) -> dict:
    """The score of each sample by `net` ("classifier" or "predictor", train.objectives.Score)
    with `norm`, and the two predictions (predictor_pred -1 unless a predictor scores: another
    second network, softreg's auxiliary one, is not a label predictor)."""
    scorer = out.aux if net == "predictor" else out.logits
    pred = out.aux.argmax(1) if net == "predictor" else torch.full_like(given, -1)
    return {"score": label_scores(scorer, given, norm), "classifier_pred": out.logits.argmax(1),
            "predictor_pred": pred}


def ranks(s: Scores) -> np.ndarray:
    """1 = most suspicious; ties broken by the lower index, so the order is reproducible."""
    order = np.lexsort((s.index, -s.score))
    r = np.empty(len(s), dtype=np.int32 if len(s) < 2**31 else np.int64)
    r[order] = np.arange(1, len(s) + 1, dtype=r.dtype)
    return r


def write_scores(s: Scores, rank: np.ndarray, manifest: Path, out: Path, top_k: int = 0,
                 extra_rows=(), group_rows: int = 65536) -> dict:
    """label_scores.parquet in manifest order, key and shard joined chunk by chunk. Memory:
    Scores (28 bytes a row), rank (4), a row-of-index lookup (4 per dataset index) and one
    manifest chunk; never a Python object per row of the split (the global rank needs only
    the scores). Returns {row: manifest record} for the top_k rows and `extra_rows`."""
    row_of = np.full(int(s.index.max()) + 1 if len(s) else 0, -1, dtype=np.int32)
    row_of[s.index] = np.arange(len(s), dtype=np.int32)
    wanted = rank <= top_k
    wanted[np.asarray(extra_rows, dtype=np.int64)] = True
    records, written, pending = {}, 0, []
    cols = [c for c in ("key", "shard", "index", "source") if c in manifests.column_names(manifest)]
    with safe_io.temp_path(out) as tmp, pq.ParquetWriter(tmp, SCHEMA, use_dictionary=["shard"]) as writer:
        for chunk, sel, r in _joined(manifest, cols, row_of):
            pending.append(_table(chunk, sel, r, s, rank))
            written += len(sel)
            if sum(map(len, pending)) >= group_rows:     # row groups of ~64k rows
                writer.write_table(pa.concat_tables(pending))
                pending = []
            for i in np.flatnonzero(wanted[r]):
                records[int(r[i])] = {c: chunk.column(c)[int(sel[i])].as_py() for c in cols}
        if pending:
            writer.write_table(pa.concat_tables(pending))
    if written != len(s):
        raise DataError(f"manifest {manifest} lacks {len(s) - written} of the {len(s)} scored samples")
    return records


def _joined(manifest: Path, cols: list, row_of: np.ndarray, rows: int = 8192):
    """(manifest chunk, positions in it, scored rows), decoded page by page
    (pipeline.manifest.iter_batches)."""
    for chunk in manifests.iter_batches(manifest, cols, rows):
        idx = chunk.column("index").to_numpy()
        found = np.full(len(idx), -1, dtype=np.int64)
        inside = idx < len(row_of)
        found[inside] = row_of[idx[inside]]
        sel = np.flatnonzero(found >= 0)
        if len(sel):
            yield chunk, sel, found[sel]


def _table(chunk, sel, r, s: Scores, rank) -> pa.Table:
    pp = s.predictor_pred[r]
    arr = lambda v: pa.array(v.astype(np.int64))  # noqa: E731
    return pa.table({"key": chunk.column("key").take(sel), "index": arr(s.index[r]),
                     "shard": chunk.column("shard").take(sel), "label": arr(s.label[r]),
                     "clean_label": arr(s.clean[r]), "score": pa.array(s.score[r]),
                     "rank": arr(rank[r]), "classifier_pred": arr(s.classifier_pred[r]),
                     "predictor_pred": pa.array(pp.astype(np.int64), mask=pp < 0)}, schema=SCHEMA)


def suspect_rows(s: Scores, rank, records: dict, classes, top_k: int) -> list[dict]:
    """suspects.csv's rows, most suspicious first."""
    rows = sorted((int(rank[r]), r) for r in records if rank[r] <= top_k)
    return [{**records[r], "rank": k, "index": int(s.index[r]), "given": classes[s.label[r]],
             "predicted": classes[suggested(s, r)], "score": f"{s.score[r]:.6g}"} for k, r in rows]


def suggested(s: Scores, r) -> int:
    """The label the scorer expects: the predictor's argmax for LIMIT, else the classifier's."""
    return int(s.predictor_pred[r]) if s.predictor_pred[r] >= 0 else int(s.classifier_pred[r])
