"""Top-k predictions of a run's classifier over shards or image files.

Both sources yield pipeline.batch.Batch (uint8 images, labels, clean labels, an index), so one
loop serves them: shards through pipeline.loader (eval transforms, the card's labels as
stored, no training noise), image files through a DataLoader over eval_image, the same
transform as the shards' (pipeline/augment.py). For image files `index` is the position in
the file list and the labels are -1 (unknown)."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline import augment
from pipeline.batch import Batch, to_device
from pipeline.cpu import IMAGE_ERRORS, checked_image
from pipeline.shards import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class Predictions:
    """One row per sample read, in reading order. label/clean: -1 where unknown."""
    index: np.ndarray           # (N,) int64: global sample index (shards) or file position (images)
    label: np.ndarray           # (N,) int64 given label
    clean: np.ndarray           # (N,) int64 clean label
    top_class: np.ndarray       # (N, k) int32, most probable first
    top_prob: np.ndarray        # (N, k) float32 softmax probabilities
    skipped: list               # [(shard or file, key, reason)]

    def __len__(self):
        return len(self.index)


def list_images(specs: list[str]) -> list[Path]:
    """Files as given, and the image files under each folder (recursively, sorted), so the
    order and thus the output is the same on every run."""
    out = []
    for spec in specs:
        p = Path(spec)
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"--images {spec}: no such file or folder")
    if not out:
        raise DataError(f"--images {' '.join(specs)}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return out


class ImageFiles(Dataset):
    """(uint8 (C, H, W) or None, position, reason): a damaged file is a named skip, not a crash."""

    def __init__(self, paths: list[Path], aug: augment.AugSpec):
        self.paths, self.aug = paths, aug

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return augment.eval_image(checked_image(self.paths[i].read_bytes()), self.aug), i, ""
        except IMAGE_ERRORS as e:
            return None, i, f"bad image: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def _collate(paths):
    def collate(items):
        good = [(x, i) for x, i, _ in items if x is not None]
        skipped = [(str(paths[i]), "", why) for x, i, why in items if x is None]
        images = torch.stack([x for x, _ in good]) if good else torch.zeros(0, dtype=torch.uint8)
        index = torch.tensor([i for _, i in good], dtype=torch.int64)
        unknown = torch.full_like(index, -1)
        return Batch(images, unknown, unknown.clone(), index, skipped)
    return collate


def image_batches(paths: list[Path], aug: augment.AugSpec, batch_size: int, workers: int,
                  rank: int = 0, world: int = 1):
    """This process's share of the files (every world-th, from rank) in batches."""
    mine = list(range(rank, len(paths), world))
    ds = torch.utils.data.Subset(ImageFiles(paths, aug), mine)
    return DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate(paths))


@torch.no_grad()
def predict(model, batches, norm: tuple, device, k: int, bar, autocast=None,
            channels_last: bool = False) -> Predictions:
    """Softmax top-k of `model` over `batches` (pipeline Batch objects, uint8 on the host);
    `bar` is advanced by the samples of each batch (pipeline.progress)."""
    model.eval()
    cols = {"index": [], "label": [], "clean": [], "top_class": [], "top_prob": []}
    skipped = []
    for batch in batches:
        skipped += batch.skipped
        if len(batch) == 0 or batch.pad or batch.images.ndim != 4:
            continue
        b = to_device(batch, device, *norm, channels_last)
        with autocast() if autocast else torch.autocast("cpu", enabled=False):
            logits = model(b.images)
        prob, cls = logits.float().softmax(1).topk(min(k, logits.shape[1]), dim=1)   # (B, k)
        cols["top_class"].append(cls.to(torch.int32).cpu().numpy())
        cols["top_prob"].append(prob.cpu().numpy())
        for name, t in (("index", batch.index), ("label", batch.labels), ("clean", batch.clean)):
            cols[name].append(t.cpu().numpy().astype(np.int64))
        bar.update(len(batch))
    if not cols["index"]:
        return Predictions(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros((0, k), np.int32), np.zeros((0, k), np.float32), skipped)
    return Predictions(**{n: np.concatenate(v) for n, v in cols.items()}, skipped=skipped)


def merge(parts: list[Predictions]) -> Predictions:
    """Several processes' predictions as one, ordered by index: each process (and each of its
    --workers) reads its shards in its own interleaving, so index order is the one order that
    makes the table the same for any number of processes and workers."""
    cat = {n: np.concatenate([getattr(p, n) for p in parts]) for n in ("index", "label", "clean", "top_class", "top_prob")}
    order = np.argsort(cat["index"], kind="stable")
    return Predictions(**{n: v[order] for n, v in cat.items()}, skipped=[s for p in parts for s in p.skipped])
