"""Peak memory of tools/rank_labels.py's scoring and writing path on a long synthetic stream.

    python tools/bench_rank_memory.py [--rows 1000000] [--batch 4096]

Writes a synthetic manifest (key, split, shard, index, label, clean_label, source) in
chunks, streams synthetic classifier and predictor logits (30% uniform label noise; the
logits favour the clean class) through the same functions the tool uses (score_outputs,
Collector, ranks, grid_rows, write_scores, detection_summary) and prints the peak RSS of
the process, and how much of it came after the imports (a CUDA build of torch alone holds
~700 MB resident, ~430 MB of it shared-library pages). Exit status 1 when the rows took
1 GB or more."""
import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models.limit import Outputs
from tools.review.detection import detection_summary
from tools.review.scores import Collector, ranks, score_outputs, write_scores
from tools.review.suspects import grid_rows

K = 10


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def write_manifest(path: Path, n: int) -> None:
    """A manifest as tools/make_shards.py writes it: one pq.write_table (1M-row row groups)."""
    idx = np.arange(n)
    pq.write_table(pa.table({
        "key": [f"sample_{i:08d}" for i in idx], "split": ["train"] * n,
        "shard": [f"synth-{i // 10_000:04d}.tar" for i in idx], "index": idx,
        "label": idx % K, "clean_label": idx % K,
        "source": [f"images/{i % 97:02d}/{i:08d}.jpg" for i in idx]}), path)


def stream(n: int, batch: int, seed: int = 0):
    """(index, given, clean, classifier logits, predictor logits) batches."""
    g = torch.Generator().manual_seed(seed)
    for lo in range(0, n, batch):
        index = torch.arange(lo, min(n, lo + batch))
        clean = index % K
        flip = torch.rand(len(index), generator=g) < 0.3
        given = torch.where(flip, (clean + torch.randint(1, K, (len(index),), generator=g)) % K, clean)
        onehot = torch.nn.functional.one_hot(clean, K).float()
        logits = torch.randn(len(index), K, generator=g) + 3 * onehot
        aux = torch.randn(len(index), K, generator=g) + 3 * onehot
        yield index, given, clean, logits, aux


def run(n: int, batch: int, folder: Path) -> dict:
    manifest = folder / "synth.parquet"
    child = multiprocessing.get_context("spawn").Process(target=write_manifest, args=(manifest, n))
    child.start()                      # in a child: the synthetic input is not the tool's memory
    child.join()
    base = peak_rss_mb()
    t0 = time.perf_counter()
    col = Collector(n)
    for index, given, clean, logits, aux in stream(n, batch):
        col.add(index=index, label=given, clean=clean, **score_outputs(Outputs(logits, aux), given, "predictor", "mae"))
    s = col.result()
    rank = ranks(s)
    picks = grid_rows(s.label, rank, 8, K)
    records = write_scores(s, rank, manifest, folder / "label_scores.parquet", top_k=1000, extra_rows=picks)
    summary = detection_summary(s.score, s.label, s.clean)
    rows = pq.ParquetFile(folder / "label_scores.parquet").metadata.num_rows
    return {"rows": rows, "records": len(records), "roc_auc": summary["roc_auc"],
            "seconds": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "import_rss_mb": base}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=4096)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(args.rows, args.batch, Path(tmp))
    grown = res["peak_rss_mb"] - res["import_rss_mb"]
    print(f"{res['rows']} rows scored and written in {res['seconds']:.1f} s, roc_auc {res['roc_auc']:.4f}; "
          f"peak RSS {res['peak_rss_mb']:.0f} MB: {res['import_rss_mb']:.0f} MB before the first row "
          f"(imports), {grown:.0f} MB for the rows")
    return 0 if grown < 1024 else 1


if __name__ == "__main__":
    sys.exit(main())
