"""From flags to batches: resolve the shards and the card, then yield one split's `Batch`es
for an epoch with label noise applied, whatever the decode backend. The training loop only
ever sees `loader(epoch)`."""
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq
import torch


from pipeline import shards
from pipeline.augment import AugSpec, spec_from_card  # noqa: F401  (re-exported for callers)
from pipeline.batch import Batch
from pipeline.cpu import ReadSpec, cpu_batches
from pipeline.noise import FixedLabels, NoiseTable, parse_noise, transition_matrix
from pipeline.shards import DataError, Part


@dataclass
class Dataset:
    card: dict
    card_path: Path
    urls: dict[str, list[str]]          # split -> shard urls

    @property
    def classes(self) -> list[str]:
        return self.card["classes"]


def resolve(train, val=None, test=None, trust: bool = False) -> Dataset:
    """Shards of each split; val/test default to the card's other splits. Errors name the
    flag whose value is at fault (--data, --val-data, --test-data). `trust` (--trust-urls)
    lets the card list pipe: and remote shards (pipeline.shards.check_file_url)."""
    def card_of(train_urls):
        card_path = (shards._only_card(Path(train[0])) if Path(train[0]).is_dir()
                     else shards.card_path_for(train_urls[0]))
        return card_path, shards.read_card(card_path)
    train_urls = _flagged("--data", shards.expand, train, trust)
    card_path, card = _flagged("--data", card_of, train_urls)
    urls = {"train": train_urls}
    for split, given in (("val", val), ("test", test)):
        if given:
            urls[split] = _flagged(f"--{split}-data", shards.expand, given, trust)
        elif split in card["splits"]:
            urls[split] = _flagged("--data", shards.split_urls, card, card_path, split, trust)
    for flag, split in (("--data", "train"), ("--val-data", "val"), ("--test-data", "test")):
        _flagged(flag, listed_in_card, urls.get(split, []), card, card_path)
    return Dataset(card, card_path, urls)


def listed_in_card(urls: list[str], card: dict, card_path: Path) -> None:
    """A pattern can match shards of an older conversion left in the folder: training on them
    would mix two datasets (and their counts are not the card's), so a shard the card does
    not list is an error."""
    listed = shards.shard_counts(card)
    stray = [u for u in urls if shards.shard_name(u) not in listed]
    if stray:
        raise DataError(f"{stray[0]} is not listed in the dataset card {card_path}"
                        + (f" (and {len(stray) - 1} more)" if len(stray) > 1 else "")
                        + ": a shard of another conversion? remove it or convert again")


def _flagged(flag: str, fn, *args):
    """fn(*args) with its DataError prefixed by the flag it came from."""
    try:
        return fn(*args)
    except DataError as e:
        raise DataError(f"{flag}: {e}") from None


def choose_backend(name: str) -> tuple[str, str]:
    """-> (backend, why). auto: DALI when it can decode on a GPU, else the CPU workers."""
    from pipeline import dali
    if name == "dali" and not dali.dali_available():
        raise DataError(dali.INSTALL)
    if name == "auto":
        if dali.gpu_decode_available():
            return "dali", "auto: DALI with GPU (mixed) decoding"
        return "cpu", "auto: CPU workers (" + ("no GPU" if dali.dali_available() else "DALI not installed") + ")"
    return name, name


def subset_mask(ds: Dataset, n: int, seed: int) -> np.ndarray | None:
    """A seeded choice of n train samples (by global index, from the manifest), so the same
    subset is read by every backend, rank and resume."""
    if not n:
        return None
    manifest = ds.card_path.with_suffix(".parquet")
    t = pq.read_table(manifest, columns=["split", "index"]).to_pydict()
    train_idx = np.array([i for s, i in zip(t["split"], t["index"]) if s == "train"])
    if n > len(train_idx):
        raise DataError(f"--max-train-samples {n} exceeds the {len(train_idx)} train samples")
    keep = np.zeros(ds.card["num_indices"], dtype=bool)
    keep[np.random.default_rng(seed).choice(train_idx, n, replace=False)] = True
    return keep


def shard_sizes(ds: Dataset, keep: np.ndarray | None) -> dict[str, int]:
    """Samples per shard file name that a reader will yield (the subset counted in)."""
    if keep is None:
        return shards.shard_counts(ds.card)
    t = pq.read_table(ds.card_path.with_suffix(".parquet"), columns=["split", "shard", "index"]).to_pydict()
    sizes = dict.fromkeys(shards.shard_counts(ds.card), 0)
    for split, shard, index in zip(t["split"], t["shard"], t["index"]):
        sizes[shard] += split != "train" or bool(keep[index])     # the subset is of train only
    return sizes


class Balanced:
    """--balance N: each epoch, N train samples drawn class-balanced from the *given* labels
    (N/K per class without replacement; a class with fewer samples gives all it has), as the
    DivideMix and ELR Clothing1M recipes do. A function of (seed, epoch) only, so DDP ranks
    and resumed runs agree. Callable like a subset mask: epoch -> bool mask over indices.
    (Every shard is still read, headers only for the samples left out.)"""

    def __init__(self, ds: Dataset, n: int, seed: int, noise: NoiseTable, keep: np.ndarray | None):
        t = pq.read_table(ds.card_path.with_suffix(".parquet"), columns=["split", "shard", "index", "label"])
        t = t.filter(pa.compute.equal(t["split"], "train")).to_pydict()
        index = np.array(t["index"], dtype=np.int64)
        given = noise.apply(torch.as_tensor(t["label"]), torch.as_tensor(index)).numpy()
        use = keep[index] if keep is not None else np.ones(len(index), dtype=bool)
        k = len(ds.classes)
        self.by_class = [index[use & (given == c)] for c in range(k)]
        self.per_class, self.seed, self.n_total = max(1, n // k), seed, ds.card["num_indices"]
        self.shard_of = dict(zip(t["index"], t["shard"]))
        self._cache: tuple = (None, None)

    def __call__(self, epoch: int) -> np.ndarray:
        if self._cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            mask = np.zeros(self.n_total, dtype=bool)
            for members in self.by_class:
                mask[rng.choice(members, min(self.per_class, len(members)), replace=False)] = True
            self._cache = (epoch, mask)
        return self._cache[1]

    def count(self, epoch: int = 0) -> int:
        return int(self(epoch).sum())

    def sizes(self, epoch: int) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for i in np.flatnonzero(self(epoch)).tolist():
            sizes[self.shard_of[i]] = sizes.get(self.shard_of[i], 0) + 1
        return sizes


def worker_batches(n: int, batch_size: int) -> int:
    """Batches a worker yields for n samples (cpu.batched folds a lone tail into the batch before)."""
    full, rest = divmod(n, batch_size)
    return full if (rest == 1 and full) else full + (rest > 0)


def noise_table(ds: Dataset, noise: str, pairs: str, seed: int) -> NoiseTable:
    spec = parse_noise(noise)
    return NoiseTable(transition_matrix(spec, ds.classes, pairs), ds.card["num_indices"], seed)


def given_labels(ds: Dataset, noise: str, pairs: str, seed: int, fixes_file: str = ""):
    """(the labels a run trains on: --noise, then --label-fixes; the fixes, or None). One
    definition for the trainer and rank_labels, so both see the same given labels."""
    table = noise_table(ds, noise, pairs, seed)
    if not fixes_file:
        return table, None
    from pipeline.fixes import read_fixes
    fixes = _flagged("--label-fixes", read_fixes, fixes_file, _manifest_keys(ds), ds.card["num_indices"], ds.classes)
    return FixedLabels(table, fixes.relabel, ds.card["num_indices"]), fixes


def _manifest_keys(ds: Dataset) -> dict[str, int]:
    """key -> index over the manifest (one Python string a sample: ~100 MB at 10^6, read once)."""
    t = pq.read_table(ds.card_path.with_suffix(".parquet"), columns=["key", "index"])
    return dict(zip(t.column("key").to_pylist(), t.column("index").to_pylist()))


def without(ds: Dataset, keep: np.ndarray | None, drop) -> np.ndarray | None:
    """The train mask (subset_mask's; None: the whole train split) less the dropped indices."""
    if not drop:
        return keep
    if keep is None:
        t = pq.read_table(ds.card_path.with_suffix(".parquet"), columns=["split", "index"])
        t = t.filter(pa.compute.equal(t["split"], "train"))
        keep = np.zeros(ds.card["num_indices"], dtype=bool)
        keep[t.column("index").to_numpy()] = True
    else:
        keep = keep.copy()
    keep[np.fromiter(drop, dtype=np.int64)] = False
    return keep


class Loader:
    """Batches of one split for one epoch. Noise goes on train and val, never on test."""

    def __init__(self, urls: list[str], spec: ReadSpec, n_classes: int, *, workers: int,
                 noise: NoiseTable | None, keep: np.ndarray | None = None, part: Part = Part(),
                 backend: str = "cpu", sizes: dict[str, int] | None = None, cache: bool = False):
        self.urls, self.spec, self.n_classes, self.workers = urls, spec, n_classes, workers
        self.noise, self.keep, self.part, self.backend = noise, keep, part, backend
        self.sizes = sizes or {}
        self._dali = None
        # an eval split has no augmentation and a fixed order: with `cache`, its decoded batches
        # from the first full pass are replayed in later epochs (small sets: decoding, not the
        # model, was half of MNIST's evaluation time)
        self.cache, self._cached = cache and not spec.train, None

    def as_eval(self) -> "Loader":
        """The same samples and given labels with eval transforms, in order (scoring a split,
        estimating FW's transition matrix)."""
        return Loader(self.urls, replace(self.spec, train=False), self.n_classes, workers=self.workers,
                      noise=self.noise, keep=self.keep, part=self.part, backend=self.backend, sizes=self.sizes)

    def expected(self, epoch: int) -> int:
        """Samples of this split all ranks together should read this epoch (from the card,
        the subset or the balanced draw): what --max-skip-frac measures losses against."""
        sizes = self.keep.sizes(epoch) if callable(self.keep) else self.sizes
        return sum(sizes.get(shards.shard_name(u), 0) for u in self.urls)

    def keep_at(self, epoch: int) -> np.ndarray | None:
        return self.keep(epoch) if callable(self.keep) else self.keep

    def shard_order(self, epoch: int) -> list[str]:
        """The order the shards are split over ranks in. The CPU backend re-splits every epoch;
        a DALI pipeline is built once over its rank's shards (a build costs about a second) and
        shuffles inside them, so for DALI the split of epoch 0 holds for every epoch, and
        steps() must count that split, not one it does not read."""
        return shards.epoch_order(self.urls, self.spec.seed, 0 if self.backend == "dali" else epoch,
                                  shuffle=self.spec.train)

    def steps(self, epoch: int) -> int:
        """Batches every rank yields this epoch: the most any rank has, so that all ranks take
        the same number of DDP steps (a rank that runs dry would hang the others)."""
        order = self.shard_order(epoch)
        w = 1 if self.backend == "dali" else max(1, self.workers)   # DALI: one stream per rank
        sizes = self.keep.sizes(epoch) if callable(self.keep) else self.sizes
        per_rank = [sum(worker_batches(sum(sizes.get(shards.shard_name(u), 0) for u in shards.for_worker(mine, i, w)),
                                       self.spec.batch_size) for i in range(w))
                    for mine in (shards.for_rank(order, Part(r, self.part.world)) for r in range(self.part.world))]
        return max(per_rank)

    def __call__(self, epoch: int, start: dict | None = None):
        """This rank's batches; under DDP training, padded with zero-weight repeats up to
        steps(epoch). Padding is bounded by the largest rank's surplus and never counted.
        `start` ({worker: batches consumed}, a saved `position`) resumes inside the epoch;
        `self.position` tracks the same for what has been yielded so far."""
        self.position = {int(k): v for k, v in (start or {}).items()}
        if self.cache:
            yield from self._replay(epoch)
            return
        batches = self._batches(epoch)
        if self.part.world == 1 or not self.spec.train:
            yield from batches
            return
        steps, taken, last = self.steps(epoch), sum(self.position.values()), None
        for batch in batches:
            if len(batch) and taken == steps:   # more than the card promised: keep ranks in step
                batch = Batch(batch.images[:0], batch.labels[:0], batch.clean[:0], batch.index[:0],
                              batch.skipped + [("", "", "surplus batch beyond the card's counts")])
            taken, last = taken + (len(batch) > 0), batch if len(batch) else last
            yield batch
        if taken < steps and last is None:
            raise DataError(f"rank {self.part.rank} read no sample this epoch: cannot keep DDP ranks in step")
        for _ in range(steps - taken):
            yield Batch(last.images, last.labels, last.clean, last.index, [], pad=True)

    def _replay(self, epoch: int):
        if self._cached is None:
            kept = []
            for batch in self._batches(epoch):
                kept.append(batch)
                yield batch
            self._cached = kept          # only a whole pass is kept
        else:
            yield from self._cached

    def _batches(self, epoch: int):
        order = self.shard_order(epoch)
        # evaluation has no collective inside the loop, so a rank may have no shard there
        mine = shards.for_rank(order, self.part) if self.spec.train else order[self.part.rank::self.part.world]
        if self.backend == "dali":
            if self._dali is None:      # one pipeline for all epochs, over shard_order's split
                from pipeline.dali import DaliStream
                self._dali = DaliStream(mine, self.spec, self.n_classes, self.workers, self.part.rank)
            self._dali.keep = self.keep_at(epoch)
            source = ((*b, 0, n) for n, b in enumerate(self._dali(epoch)) if n >= self.position.get(0, 0))
            streams = 1
        else:
            source = cpu_batches(mine, self.spec, self.n_classes, epoch, self.workers, self.part.rank,
                                 self.keep_at(epoch), skip=self.position)
            streams = max(1, self.workers)
        for images, labels, clean, index, skipped, worker, n in round_robin(source, streams):
            given = self.noise.apply(labels, index) if self.noise is not None and len(labels) else labels
            if n >= 0:
                self.position[worker] = n + 1
            elif not skipped:
                continue                    # a bare end marker: nothing to report
            yield Batch(images, given, clean, index, skipped)


def round_robin(tagged, streams: int):
    """Put (..., worker, n) batches in one fixed order, n-major then worker (what the
    DataLoader does for a fresh epoch), whatever the order they arrive in: after a resume,
    workers start at different n. An end marker (n = -1) passes at once."""
    pending: dict[int, deque] = {w: deque() for w in range(streams)}
    live = set(range(streams))
    for item in tagged:
        worker, n = item[-2], item[-1]
        if n < 0:
            live.discard(worker)
            yield item
        else:
            pending[worker].append(item)
        while pending and all(pending[w] for w in live) and any(pending.values()):
            w = min((q[0][-1], w) for w, q in pending.items() if q)[1]
            yield pending[w].popleft()
    rest = sorted((it for q in pending.values() for it in q), key=lambda it: (it[-1], it[-2]))
    yield from rest


def build_loaders(ds: Dataset, aug: AugSpec, *, batch_size: int, workers: int, seed: int,
                  noise: NoiseTable, keep, part: Part = Part(), backend: str = "cpu",
                  cache_eval: bool = False) -> dict[str, Loader]:
    """keep: a subset mask, a Balanced sampler (a mask per epoch) or None, for train only.
    cache_eval: val and test keep their decoded batches in RAM after the first epoch."""
    loaders, sizes = {}, shard_sizes(ds, None if callable(keep) else keep)
    for split, urls in ds.urls.items():
        train = split == "train"
        spec = ReadSpec(aug, train=train, batch_size=batch_size, seed=seed)
        loaders[split] = Loader(urls, spec, len(ds.classes), workers=workers,
                                noise=None if split == "test" else noise,
                                keep=keep if train else None, part=part, backend=backend, sizes=sizes,
                                cache=cache_eval)
    return loaders


