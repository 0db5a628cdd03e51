"""From flags to batches: resolve the shards and the card, then yield one split's `Batch`es
for an epoch with label noise applied, whatever the decode backend. The training loop only
ever sees `loader(epoch)`."""
from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline import backends, shards
from pipeline.augment import AugSpec, card_spec_problem, spec_from_card  # noqa: F401  (re-exported for callers)
from pipeline.batch import Batch
from pipeline.cpu import ReadSpec
from pipeline.manifest import read as read_manifest
from pipeline.noise import FixedLabels, NoiseTable, parse_noise, transition_matrix
from pipeline.selection import Balanced, Selection, Subset, TrainRows
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
        card = shards.read_card(card_path)
        why = card_spec_problem(card)               # augment sizes and normalize: a stranger's card
        if why:
            raise DataError(f"dataset card {card_path}: {why}")
        return card_path, card
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


def selection(ds: Dataset, n: int = 0, balance: int = 0, seed: int = 0, noise=None, drop=()) -> Selection:
    """The train samples each epoch reads (pipeline/selection.py): all, a seeded subset of n
    (--max-train-samples), less a reviewer's drops (--label-fixes), class-balanced draws of
    `balance` a epoch from the given labels (`noise`: the run's, fixes included)."""
    if not (n or balance or drop):
        return Selection()
    rows = TrainRows.read(ds.card_path.with_suffix(".parquet"), ds.card["num_indices"], len(ds.classes))
    total = ds.card["num_indices"]
    mask = Subset(rows, total, n, seed).mask(0) if n else None
    if drop:
        if mask is None:
            mask = np.zeros(total, dtype=bool)
            mask[rows.index] = True
        mask = mask.copy()
        mask[np.fromiter(drop, dtype=np.int64)] = False
    if balance:
        return Balanced(rows, total, len(ds.classes), balance, seed, noise, within=mask)
    return Subset(rows, total, 0, 0, fixed=mask)


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
    # the train split's indices: a fix to a val or test sample would be counted but never applied
    fixes = _flagged("--label-fixes", read_fixes, fixes_file, manifest_keys(ds), ds.card["num_indices"], ds.classes,
                     train_indices(ds))
    return FixedLabels(table, fixes.relabel, ds.card["num_indices"]), fixes


def manifest_keys(ds: Dataset) -> dict[str, int]:
    """key -> index over the manifest (one Python string a sample: ~100 MB at 10^6, read once)."""
    t = read_manifest(ds.card_path.with_suffix(".parquet"), ["key", "index"], ds.card["num_indices"])
    return dict(zip(t.column("key").to_pylist(), t.column("index").to_pylist()))


def train_indices(ds: Dataset) -> set[int]:
    """The indices of the manifest's train rows."""
    t = read_manifest(ds.card_path.with_suffix(".parquet"), ["split", "index"], ds.card["num_indices"])
    return {i for s, i in zip(t.column("split").to_pylist(), t.column("index").to_pylist()) if s == "train"}


class Loader:
    """Batches of one split for one epoch. Noise goes on train and val, never on test."""

    def __init__(self, urls: list[str], spec: ReadSpec, n_classes: int, *, workers: int,
                 noise: NoiseTable | None, select: Selection | None = None, part: Part = Part(),
                 backend: str = "cpu", sizes: dict[str, int] | None = None, cache: bool = False):
        self.urls, self.spec, self.n_classes, self.workers = urls, spec, n_classes, workers
        self.noise, self.select, self.part, self.backend = noise, select or Selection(), part, backend
        self.card_sizes = sizes or {}               # the card's samples per shard
        self._backend: backends.Backend = backends.make(backend, spec, n_classes, workers, part.rank)
        # an eval split has no augmentation and a fixed order: with `cache`, its decoded batches
        # from the first full pass are replayed in later epochs (small sets: decoding, not the
        # model, was half of MNIST's evaluation time)
        self.cache, self._cached = cache and not spec.train, None

    def as_eval(self) -> "Loader":
        """The same samples and given labels with eval transforms, in order (scoring a split,
        estimating FW's transition matrix)."""
        return Loader(self.urls, replace(self.spec, train=False), self.n_classes, workers=self.workers,
                      noise=self.noise, select=self.select, part=self.part, backend=self.backend,
                      sizes=self.card_sizes)

    def expected(self, epoch: int) -> int:
        """Samples of this split all ranks together should read this epoch (from the card,
        the subset or the balanced draw): what --max-skip-frac measures losses against."""
        sizes = self.sizes(epoch)
        return sum(sizes.get(shards.shard_name(u), 0) for u in self.urls)

    def sizes(self, epoch: int) -> dict[str, int]:
        """Samples per shard name a reader yields this epoch: the selection's, or the card's."""
        return self.select.sizes(epoch) or self.card_sizes

    def shard_order(self, epoch: int) -> list[str]:
        """The order the shards are split over ranks in: this epoch's, or epoch 0's for every
        epoch where the backend's split is fixed (a DALI pipeline is built once over its rank's
        shards), so that steps() counts the split the backend reads."""
        return shards.epoch_order(self.urls, self.spec.seed, 0 if self._backend.fixed_split else epoch,
                                  shuffle=self.spec.train)

    def steps(self, epoch: int) -> int:
        """Batches every rank yields this epoch: the most any rank has, so that all ranks take
        the same number of DDP steps (a rank that runs dry would hang the others)."""
        order = self.shard_order(epoch)
        w = self._backend.streams
        sizes = self.sizes(epoch)
        per_rank = [sum(worker_batches(sum(sizes.get(shards.shard_name(u), 0) for u in shards.for_worker(mine, i, w)),
                                       self.spec.batch_size) for i in range(w))
                    for mine in (shards.for_rank(order, Part(r, self.part.world)) for r in range(self.part.world))]
        return max(per_rank)

    def __call__(self, epoch: int, start: dict | None = None):
        """This rank's batches; under DDP training, padded with zero-weight repeats up to
        steps(epoch). Padding is bounded by the largest rank's surplus and never counted.
        `start` ({stream: batches consumed}, a saved position) resumes inside the epoch;
        each batch carries the position once it is taken (Batch.position, the one holder)."""
        start = {int(k): v for k, v in (start or {}).items()}
        if self.cache:
            yield from self._replay(epoch, start)
            return
        batches = self._batches(epoch, start)
        if self.part.world == 1 or not self.spec.train:
            yield from batches
            return
        steps, taken, last = self.steps(epoch), sum(start.values()), None
        for batch in batches:
            if len(batch) and taken == steps:   # more than the card promised: keep ranks in step
                batch = Batch(batch.images[:0], batch.labels[:0], batch.clean[:0], batch.index[:0],
                              batch.skipped + [("", "", "surplus batch beyond the card's counts")],
                              position=batch.position)
            taken, last = taken + (len(batch) > 0), batch if len(batch) else last
            yield batch
        if taken < steps and last is None:
            raise DataError(f"rank {self.part.rank} read no sample this epoch: cannot keep DDP ranks in step")
        for _ in range(steps - taken):
            yield Batch(last.images, last.labels, last.clean, last.index, [], pad=True, position=last.position)

    def _replay(self, epoch: int, start: dict):
        if self._cached is None:
            kept = []
            for batch in self._batches(epoch, start):
                kept.append(batch)
                yield batch
            self._cached = kept          # only a whole pass is kept
        else:
            yield from self._cached

    def _batches(self, epoch: int, start: dict):
        order = self.shard_order(epoch)
        # evaluation has no collective inside the loop, so a rank may have no shard there
        mine = shards.for_rank(order, self.part) if self.spec.train else order[self.part.rank::self.part.world]
        source = self._backend(epoch, mine, self.select.mask(epoch), self.select.keys(epoch), dict(start))
        # The position is counted here, as batches leave round_robin, and stamped on each one:
        # the workers and prefetching run ahead of the step, so only the batch itself knows how
        # far the data had got when it was made (a local, not the loader's: it is this
        # iteration's, and a loader attribute would be a second holder that runs ahead).
        taken = dict(start)
        for t in round_robin(source, self._backend.streams):
            given = self.noise.apply(t.labels, t.index) if self.noise is not None and len(t.labels) else t.labels
            if t.n >= 0:
                taken[t.worker] = t.n + 1
            elif not t.skipped:
                continue                    # a bare end marker: nothing to report
            yield Batch(t.images, given, t.clean, t.index, t.skipped, position=dict(taken))


def round_robin(tagged, streams: int):
    """Put Tagged batches in one fixed order, n-major then stream (what the DataLoader does
    for a fresh epoch), whatever the order they arrive in: after a resume, workers start at
    different n. An end marker (n = -1) passes at once."""
    pending: dict[int, deque] = {w: deque() for w in range(streams)}
    live = set(range(streams))
    for item in tagged:
        if item.n < 0:
            live.discard(item.worker)
            yield item
        else:
            pending[item.worker].append(item)
        while pending and all(pending[w] for w in live) and any(pending.values()):
            w = min((q[0].n, w) for w, q in pending.items() if q)[1]
            yield pending[w].popleft()
    rest = sorted((it for q in pending.values() for it in q), key=lambda it: (it.n, it.worker))
    yield from rest


def build_loaders(ds: Dataset, aug: AugSpec, *, batch_size: int, workers: int, seed: int,
                  noise: NoiseTable, keep, part: Part = Part(), backend: str = "cpu",
                  cache_eval: bool = False) -> dict[str, Loader]:
    """keep: the train Selection (selection()) or None (all).
    cache_eval: val and test keep their decoded batches in RAM after the first epoch."""
    loaders, sizes = {}, shards.shard_counts(ds.card)
    for split, urls in ds.urls.items():
        train = split == "train"
        spec = ReadSpec(aug, train=train, batch_size=batch_size, seed=seed)
        loaders[split] = Loader(urls, spec, len(ds.classes), workers=workers,
                                noise=None if split == "test" else noise,
                                select=keep if train else None, part=part, backend=backend, sizes=sizes,
                                cache=cache_eval)
    return loaders


@dataclass
class RunData:
    """What a run reads, set up once (run_data): the trainer's and the scorer's are the same
    given labels, selection and shards."""
    ds: Dataset
    aug: AugSpec
    noise: NoiseTable | FixedLabels     # the given labels: --noise, then --label-fixes
    fixes: object | None                # the read --label-fixes (pipeline.fixes), or None
    select: Selection                   # the train samples each epoch reads
    loaders: dict[str, Loader]
    backend_note: str                   # which backend and why (--backend auto)

    def count(self, split: str) -> int | None:
        """Samples one pass over `split` reads: the card's count, the selection's for train
        (None when the card does not count the split)."""
        n = self.ds.card["splits"].get(split, {}).get("count")
        return self.select.count(0, n) if split == "train" and n is not None else n


def run_data(ds: Dataset, run, *, part: Part = Part(), scoring: str = "", batch_size: int = 0,
             workers: int | None = None) -> RunData:
    """The data of a run over the resolved `ds`, from `run`'s data fields (a train.config.Config:
    image_size, augment, noise, noise_pairs, noise_seed, label_fixes, max_train_samples,
    balance, seed, batch_size, workers, backend, cache_eval). Training (scoring=""): a loader
    per split, train augmented with the run's balanced draws. Scoring (scoring=SPLIT,
    tools/review/ranking.py): that split alone, eval transforms in order, with its given labels
    (test's too), the run's subset less its drops but no balanced draws (every sample it could
    train on is scored), on the CPU workers; batch_size and workers, when given, replace the
    run's."""
    if scoring and scoring not in ds.urls:
        raise DataError(f"the dataset has no {scoring!r} split")
    aug = spec_from_card(ds.card, run.image_size, "" if scoring else run.augment)
    noise, fixes = given_labels(ds, run.noise, run.noise_pairs, run.noise_seed, run.label_fixes)
    select = selection(ds, run.max_train_samples, 0 if scoring else run.balance, run.seed, noise,
                       fixes.drop if fixes else ())
    workers = run.workers if workers is None else workers
    if not scoring:
        backend, note = backends.choose(run.backend)
        loaders = build_loaders(ds, aug, batch_size=batch_size or run.batch_size, workers=workers, seed=run.seed,
                                noise=noise, keep=select, part=part, backend=backend, cache_eval=run.cache_eval)
        return RunData(ds, aug, noise, fixes, select, loaders, note)
    spec = ReadSpec(aug, train=False, batch_size=batch_size or run.batch_size, seed=run.seed)
    ld = Loader(ds.urls[scoring], spec, len(ds.classes), workers=workers, noise=noise,
                select=select if scoring == "train" else None, part=part)
    return RunData(ds, aug, noise, fixes, select, {scoring: ld}, "cpu")
