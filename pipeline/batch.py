"""The one batch type both decode backends yield, and its move to the device."""
import functools
from dataclasses import dataclass, field
from typing import NamedTuple

import torch


class Tagged(NamedTuple):
    """What a backend yields (pipeline.loader.Backend): one batch of one stream (a DataLoader
    worker; DALI has one), numbered n within it, so the loader can put batches in one fixed
    order and record how far each stream got. n = -1 is a stream's end marker, carrying its
    last skip records."""
    images: torch.Tensor        # (B, C, H, W) uint8
    labels: torch.Tensor        # (B,) int64 labels as stored (before label noise)
    clean: torch.Tensor
    index: torch.Tensor
    skipped: list
    worker: int = 0
    n: int = 0


@dataclass
class Batch:
    images: torch.Tensor        # (B, C, H, W) uint8 on the host; float, normalized, on device
    labels: torch.Tensor        # (B,) int64 given labels, after label noise
    clean: torch.Tensor         # (B,) int64 clean labels, -1 where unknown
    index: torch.Tensor         # (B,) int64 global sample index (the key of the noise table)
    skipped: list = field(default_factory=list)   # [(shard, key, reason)] since the last batch
    pad: bool = False           # a repeat that keeps DDP ranks in step: zero loss weight, no metrics
    # {stream: batches consumed} once this batch is taken: a resume point. The data position's
    # one holder: prefetching runs the loader ahead of the step, so the loader's count is not the
    # trained one; the loop saves the position of the batch it last trained on (meta.json's
    # "position" is only its serialization, one per rank).
    position: dict | None = None

    def __len__(self) -> int:
        return self.labels.shape[0]


@functools.lru_cache(maxsize=8)
def _scale(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std in uint8 units on the device, made once, not copied over every step."""
    shape = (1, -1, 1, 1)
    return (torch.tensor(mean, device=device).view(shape) * 255,
            torch.tensor(std, device=device).view(shape) * 255)


def to_device(batch: Batch, device: torch.device, mean: tuple, std: tuple,
              channels_last: bool = False) -> Batch:
    """One non-blocking copy of uint8 (4x fewer bytes than float32), then normalize on the
    device: the workers never touch floats."""
    x = batch.images.to(device, non_blocking=True)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    m, s = _scale(tuple(mean), tuple(std), torch.device(device))
    x = (x.float() - m) / s
    move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    return Batch(x, move(batch.labels), move(batch.clean), move(batch.index), batch.skipped, batch.pad,
                 batch.position)
