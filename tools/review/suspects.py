"""The suspect list a person relabels from: suspects.csv and the grid of the best-ranked
samples of each given class (suspects.png)."""
import io
from pathlib import Path

import numpy as np

from pipeline import safe_io
from pipeline.csv_cells import write_csv
from train.report import pyplot


SUSPECT_COLUMNS = ("rank", "key", "index", "shard", "source", "given", "predicted", "score")


def grid_rows(label: np.ndarray, rank: np.ndarray, per_class: int, n_classes: int,
              max_classes: int = 30) -> np.ndarray:
    """Rows of the `per_class` best-ranked samples of each given class (at most max_classes)."""
    picked = [np.zeros(0, np.int64)]
    for c in range(min(n_classes, max_classes)):
        rows = np.flatnonzero(label == c)
        picked.append(rows[np.argsort(rank[rows])[:per_class]])
    return np.concatenate(picked)


def write_suspects_csv(path: Path, rows: list[dict]) -> None:
    """The relabeling list: rank, key, index, shard, source path, given and predicted class
    names, score. Class names and keys are neutralized for spreadsheets (pipeline/csv_cells.py)."""
    write_csv(path, SUSPECT_COLUMNS, rows)


def read_images(shard_dir: Path | str, wanted: dict) -> dict:
    """{(shard, key): PIL image} for the wanted {shard: {keys}}, reading only those shards
    (in `shard_dir`, a folder or a bucket folder's URL: pipeline.bucket_cards.shard_folder)."""
    from PIL import Image

    from pipeline.records import find_images
    return {(shard, key): Image.open(io.BytesIO(data)).convert("RGB")
            for shard, key, data in find_images(shard_dir, wanted)}


def draw_suspects(path: Path, tiles: list, classes: list, shard_dir: Path | str, per_class: int) -> None:
    """tiles: [(manifest record, given, predicted)], grouped by given class, most suspicious
    first: one row per class, captioned "given -> predicted"."""
    plt = pyplot()
    rows = sorted({g for _, g, _ in tiles})
    wanted = {}
    for rec, _, _ in tiles:
        wanted.setdefault(rec["shard"], set()).add(rec["key"])
    images = read_images(shard_dir, wanted)     # never Path(): a bucket URL would lose its //
    cols = max(1, per_class)
    fig, axes = plt.subplots(max(1, len(rows)), cols, figsize=(1.3 * cols, 1.45 * max(1, len(rows))),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    col_of = {g: 0 for g in rows}
    for rec, g, p in tiles:
        ax = axes[rows.index(g), col_of[g]]
        col_of[g] += 1
        img = images.get((rec["shard"], rec["key"]))
        if img is not None:
            ax.imshow(np.asarray(img))
        ax.set_title(f"{classes[g]} -> {classes[p]}", fontsize=7, color="red" if g != p else "black")
    if not tiles:
        axes[0, 0].text(0.5, 0.5, "no samples", ha="center", va="center")
    fig.tight_layout()
    safe_io.savefig(fig, path, dpi=100)
    plt.close(fig)

