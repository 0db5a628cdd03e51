"""The decode backends behind one signature (docs/architecture.md section 3): each yields
pipeline.batch.Tagged batches and declares what the loader must know about it (how many
numbered streams its batches come in; whether its split of the shards is fixed for the run),
so pipeline/loader.py asks instead of naming one. A new backend is a class here and a line in
BACKENDS."""
import itertools
from typing import Iterator, Protocol

import numpy as np
import torch

from pipeline.batch import Batch, Tagged, to_device
from pipeline.cpu import ReadSpec, cpu_batches
from pipeline.shards import DataError


class Backend(Protocol):
    streams: int            # how many numbered streams its batches come in
    fixed_split: bool       # True: it reads the shards of its first call for the whole run

    def __call__(self, epoch: int, urls: list[str], mask: np.ndarray | None, wanted: dict | None,
                 skip: dict) -> Iterator[Tagged]:
        """This rank's batches of `urls` for `epoch`: samples outside `mask` left out, only the
        `wanted` keys read where the backend can, the first skip[stream] batches passed over."""


class CpuBackend:
    """DataLoader workers decoding with PIL (pipeline/cpu.py): one stream per worker, the
    shards re-split over ranks and workers every epoch."""
    fixed_split = False

    def __init__(self, spec: ReadSpec, n_classes: int, workers: int, rank: int):
        self.spec, self.n_classes, self.workers, self.rank = spec, n_classes, workers, rank
        self.streams = max(1, workers)

    def __call__(self, epoch, urls, mask, wanted, skip):
        return cpu_batches(urls, self.spec, self.n_classes, epoch, self.workers, self.rank, mask,
                           skip=skip, wanted=wanted)


class DaliBackend:
    """One DALI pipeline for the whole run (pipeline/dali.py), built on the first call over its
    shards (a build costs about a second) and shuffling inside them: its split is fixed, so the
    loader splits the shards as for epoch 0 every epoch and counts steps from that split. A
    later call for other shards is refused (a programming error: the loader would count steps
    for shards it does not read). One stream; `mask` is applied after decoding, per call;
    `wanted` is not used (it reads whole shards)."""
    streams = 1
    fixed_split = True

    def __init__(self, spec: ReadSpec, n_classes: int, workers: int, rank: int):
        self.spec, self.n_classes, self.workers, self.rank = spec, n_classes, workers, rank
        self.stream, self.urls = None, None

    def __call__(self, epoch, urls, mask, wanted, skip):
        if self.stream is None:
            from pipeline.dali import DaliStream
            self.stream, self.urls = DaliStream(urls, self.spec, self.n_classes, self.workers, self.rank), list(urls)
        elif list(urls) != self.urls:
            raise ValueError(f"the DALI pipeline reads the {len(self.urls)} shard(s) it was built over; asked for "
                             f"{len(urls)} other(s): its split is fixed for the run (fixed_split)")
        first = skip.get(0, 0)
        return (Tagged(*b, 0, n) for n, b in enumerate(self.stream(epoch, mask)) if n >= first)


class SyntheticBackend:
    """Random uint8 images and labels made once on `device` and given out again, endless (or
    `batches` a call): the model's cost without reading or decoding anything (the step
    benchmarks, tests). One stream; urls, mask and wanted are not used."""
    streams = 1
    fixed_split = False

    def __init__(self, spec: ReadSpec, n_classes: int, workers: int = 0, rank: int = 0, *,
                 device="cpu", batches: int | None = None):
        g = torch.Generator().manual_seed(spec.seed)
        b, a = spec.batch_size, spec.aug
        images = torch.randint(0, 256, (b, a.channels, a.size, a.size), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, n_classes, (b,), generator=g)
        self.batch = (images.to(device), labels.to(device), torch.full_like(labels, -1).to(device),
                      torch.arange(b).to(device))
        self.batches = batches

    def __call__(self, epoch, urls=(), mask=None, wanted=None, skip=None):
        ns = itertools.count((skip or {}).get(0, 0))
        if self.batches is not None:
            ns = itertools.takewhile(lambda n: n < self.batches, ns)
        return (Tagged(*self.batch, [], 0, n) for n in ns)


BACKENDS = {"cpu": CpuBackend, "dali": DaliBackend, "synthetic": SyntheticBackend}


def make(name: str, spec: ReadSpec, n_classes: int, workers: int, rank: int) -> Backend:
    return BACKENDS[name](spec, n_classes, workers, rank)


def choose(name: str) -> tuple[str, str]:
    """-> (backend, why). auto: DALI when it can decode on a GPU, else the CPU workers."""
    from pipeline import dali
    if name == "dali" and not dali.dali_available():
        raise DataError(dali.INSTALL)
    if name == "auto":
        if dali.gpu_decode_available():
            return "dali", "auto: DALI with GPU (mixed) decoding"
        return "cpu", "auto: CPU workers (" + ("no GPU" if dali.dali_available() else "DALI not installed") + ")"
    return name, name


def synthetic_batch(spec: ReadSpec, n_classes: int, device, mean: tuple, std: tuple,
                    channels_last: bool = True) -> Batch:
    """One normalized device batch from the synthetic backend, as the loop's to_device makes
    it: what the step benchmarks and tests time and train on."""
    t = next(SyntheticBackend(spec, n_classes, device=device)(0))
    return to_device(Batch(t.images, t.labels, t.clean, t.index), device, mean, std, channels_last)
