"""rank_labels' exports for the label tools people use (issue 28 item 5).

cleanlab (`--cleanlab`): OUT/cleanlab/pred_probs.npy (N, K) float32, the softmax of the network
that scores the run (train.objectives' Score: LIMIT's predictor, else the classifier), rows in
dataset-index order; labels.npy (N,) int64, the given labels the run trained on (its noise
table applied); index.npy (N,) int64, each row's global sample index (label_scores.parquet's
`index`). The arrays `cleanlab.filter.find_label_issues(labels, pred_probs)` and
`cleanlab.count.estimate_py_and_noise_matrices_from_probabilities(labels, pred_probs)` take.

FiftyOne (`--fiftyone N`): OUT/fiftyone/, FiftyOne's FiftyOneImageClassificationDataset layout
for the N most suspicious samples: data/KEY.EXT (the shard's image bytes, not re-encoded) and
labels.json {"classes": [...], "labels": {KEY: {"label": given class id, "confidence": the
scoring network's probability of the given label, "attributes": {score, rank, predicted,
clean_label, index}}}}; FiftyOne's importer turns the attributes into fields of the label.

Probabilities are collected in memory: 4 * N * K bytes (10^6 samples of 14 classes: 56 MB)."""
from pathlib import Path

import numpy as np
import torch

from pipeline import bucket_cards, safe_io
from pipeline.records import find_images
from pipeline.shards import DataError
from tools.review.scores import ranks, suggested
from train.predict.outputs import manifest_ids

MAGIC = ((b"\x89PNG\r\n\x1a\n", "png"), (b"\xff\xd8", "jpg"), (b"GIF8", "gif"), (b"BM", "bmp"))


class ProbSink:
    """Softmax rows of the scoring network per batch, joined when written."""

    def __init__(self):
        self.index, self.probs = [], []

    def add(self, index: torch.Tensor, logits: torch.Tensor) -> None:
        self.index.append(index.cpu().numpy().astype(np.int64))
        self.probs.append(logits.float().softmax(1).cpu().numpy())      # (B, K) float32

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(index, probs) in dataset-index order."""
        if not self.index:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        index, probs = np.concatenate(self.index), np.concatenate(self.probs)
        order = np.argsort(index, kind="stable")
        return index[order], probs[order]


def aligned_labels(s, index: np.ndarray) -> np.ndarray:
    """The given labels of Scores `s` (rank_labels' columns) at `index`."""
    pos = np.full(int(max(s.index.max(initial=-1), index.max(initial=-1))) + 1, -1, np.int64)
    pos[s.index] = np.arange(len(s))
    rows = pos[index]
    if (rows < 0).any():
        raise DataError("--cleanlab: probabilities for samples the ranking did not score (internal mismatch)")
    return s.label[rows].astype(np.int64)


def write_cleanlab(out: Path, index: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> Path:
    folder = safe_io.out_dir(out / "cleanlab", "--cleanlab folder")
    for name, arr in (("pred_probs.npy", probs.astype(np.float32)), ("labels.npy", labels),
                      ("index.npy", index)):
        with safe_io.temp_path(folder / name) as tmp:
            np.save(tmp, arr, allow_pickle=False)
    return folder


def image_ext(data: bytes) -> str:
    for magic, ext in MAGIC:
        if data.startswith(magic):
            return ext
    return "webp" if data[:4] == b"RIFF" and data[8:12] == b"WEBP" else ""


def write_fiftyone(out: Path, rows: list[dict], classes: list[str], shard_dir: Path | str) -> tuple[Path, int]:
    """rows: {key, shard, index, label, clean_label, score, rank, predicted, confidence} of the
    samples to export. Returns (folder, samples written); a sample whose shard or image cannot
    be read is left out (labels.json lists only the files written)."""
    folder = safe_io.out_dir(out / "fiftyone", "--fiftyone folder")
    data = safe_io.out_dir(folder / "data", "--fiftyone data folder")
    by_key = {r["key"]: r for r in rows}
    wanted: dict[str, set] = {}
    for r in rows:
        wanted.setdefault(r["shard"], set()).add(r["key"])
    labels = {}
    for _, key, body in find_images(shard_dir, wanted):
        ext = image_ext(body)
        if not ext or key not in by_key:
            continue
        safe_io.write_bytes(data / f"{key}.{ext}", body, durable=False)   # copies: redone, not synced
        r = by_key[key]
        labels[key] = {"label": int(r["label"]), "confidence": float(r["confidence"]),
                       "attributes": {"score": float(r["score"]), "rank": int(r["rank"]),
                                      "predicted": classes[int(r["predicted"])],
                                      "clean_label": classes[int(r["clean_label"])] if r["clean_label"] >= 0 else None,
                                      "index": int(r["index"])}}
    safe_io.write_json(folder / "labels.json", {"classes": list(classes), "labels": labels})
    return folder, len(labels)


def export(s, sink: ProbSink, ds, out: Path, cleanlab: bool, fiftyone: int) -> dict:
    """The exports rank_labels' flags ask for, from its Scores `s` and the probabilities
    collected while scoring. Returns what summary.json says about them."""
    index, probs = sink.result()
    labels = aligned_labels(s, index)
    said = {}
    if cleanlab:
        said["cleanlab"] = str(write_cleanlab(out, index, probs, labels))
    if fiftyone:
        rank = ranks(s)
        rows = np.argsort(rank, kind="stable")[:fiftyone]             # most suspicious first
        ids = manifest_ids(s.index[rows], ds.card_path.with_suffix(".parquet"), ds.card["num_indices"])
        where = np.searchsorted(index, s.index[rows])                 # rows of `probs` (sorted index)
        records = [{"key": k, "shard": sh, "index": int(s.index[r]), "label": int(s.label[r]),
                    "clean_label": int(s.clean[r]), "score": float(s.score[r]), "rank": int(rank[r]),
                    "predicted": suggested(s, int(r)), "confidence": float(probs[w, s.label[r]])}
                   for r, w, k, sh in zip(rows, where, ids["key"].to_pylist(), ids["shard"].to_pylist())]
        folder, n = write_fiftyone(out, records, ds.classes, bucket_cards.shard_folder(ds.card_path))
        said["fiftyone"] = {"folder": str(folder), "samples": n, "asked": len(records)}
    return said
