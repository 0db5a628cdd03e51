"""The CPU backend: tar shards -> samples -> decode + augment in DataLoader workers -> uint8
batches. Each stage is a small generator, testable alone with `list(stage(iter([...])))`."""
import functools
import io
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.gopen import gopen

from pipeline import augment, records, remote, shards, shardset, tario
from pipeline.batch import Tagged
from pipeline.shards import for_worker
from pipeline.tario import iter_tar

# What damaged data raises; anything else (TypeError, ...) is a bug and propagates.
DATA_ERRORS = (OSError, ValueError, KeyError, EOFError, tarfile.TarError,
               Image.DecompressionBombError, UnicodeDecodeError)
# Decoding adds SyntaxError: PIL raises it from load() on a damaged PNG chunk ("broken PNG
# file"; found by fuzzing, tests/hostile.py keeps one). Nowhere else: in Python code it is a bug.
IMAGE_ERRORS = DATA_ERRORS + (SyntaxError,)


@dataclass(frozen=True)
class ReadSpec:
    aug: augment.AugSpec
    train: bool                 # train augmentation + shuffling, else eval transforms in order
    batch_size: int
    seed: int = 0
    shuffle_buffer: int = 2000  # samples; mixes samples across the shards a worker reads


# ---- hostile-input handling: shard-level records, indices, repeats ----
@dataclass(frozen=True)
class CardFacts:
    """What the dataset card and manifest beside a shard say about every sample in it."""
    counts: dict[str, int]              # shard name -> samples the card lists
    num_indices: int | None             # indices run over [0, num_indices)
    owner: np.ndarray | None = None     # index -> position in `shards` of the shard holding it, -1: none
    shards: tuple[str, ...] = ()        # shard names, in the manifest's dictionary order


@functools.lru_cache(maxsize=64)
def card_facts(card_path: str) -> CardFacts:
    try:
        card = shards.read_card(Path(card_path))
    except DATA_ERRORS:
        return CardFacts({}, None)
    n = card.get("num_indices")
    n = n if isinstance(n, int) and not isinstance(n, bool) and n >= 0 else None
    owner, names = _owners(Path(card_path).with_suffix(".parquet"), n)
    return CardFacts(shards.shard_counts(card), n, owner, names)


def _owners(manifest: Path, n: int | None):
    """index -> shard from the manifest (4 bytes per index): the one copy of a sample to
    read, whichever worker meets it first. (None, ()) without a usable manifest."""
    import pyarrow.parquet as pq
    if n is None or not manifest.is_file():
        return None, ()
    try:
        t = pq.read_table(manifest, columns=["shard", "index"], read_dictionary=["shard"]).unify_dictionaries()
        shard = t.column("shard").combine_chunks()
        index = t.column("index").to_numpy(zero_copy_only=False).astype(np.int64)
        codes = shard.indices.to_numpy(zero_copy_only=False).astype(np.int32)
        names = tuple(shard.dictionary.to_pylist())
    except (OSError, ValueError, KeyError, AttributeError):   # pyarrow's errors derive from these
        return None, ()
    owner = np.full(n, -1, dtype=np.int32)
    ok = (index >= 0) & (index < n)
    owner[index[ok]] = codes[ok]
    return owner, names


def expected_count(url: str) -> int | None:
    """Samples the dataset card beside a shard lists for it (shards.card_path_for finds it,
    for `pipe:` URLs too); None when there is no card (shards not from tools/make_shards.py)."""
    facts, _ = facts_for(url)
    return None if facts is None else facts.counts.get(shards.shard_name(url))


class IndexGuard:
    """Which sample indices one reader stream may yield: inside [0, num_indices) (a -1 would
    read the noise table from its end), and once. The copy the manifest places is the one
    read, whichever worker meets a repeat first; without a manifest, the first this stream
    (one worker's shards in one epoch) meets."""

    def __init__(self):
        self.seen: dict[str, np.ndarray | set] = {}    # card path -> indices yielded

    def problem(self, url: str, index: int) -> str | None:
        facts, card = facts_for(url)
        n = facts.num_indices if facts else None
        if not 0 <= index < (2**63 if n is None else n):
            return f"index {index} outside [0, {2**63 if n is None else n})"
        if facts is not None and facts.owner is not None:
            code = int(facts.owner[index])
            home = facts.shards[code] if code >= 0 else None
            if home != shards.shard_name(url):
                return (f"duplicate: the manifest puts index {index} in {home}" if home
                        else f"index {index} is in no shard of the manifest")
        if card not in self.seen:   # a bitmap when the range is known: 1 byte per index
            self.seen[card] = np.zeros(n, dtype=bool) if n is not None else set()
        seen = self.seen[card]
        if isinstance(seen, set):
            if index in seen:
                return f"duplicate index {index}: read before in this pass"
            seen.add(index)
        elif seen[index]:
            return f"duplicate index {index}: read before in this pass"
        else:
            seen[index] = True
        return None


@functools.lru_cache(maxsize=4096)
def facts_for(url: str) -> tuple[CardFacts | None, str]:
    """(facts, card path) for a shard URL, once per process (card_path_for stats a file)."""
    try:
        card = str(shards.card_path_for(url))
    except shards.DataError:
        return None, ""
    return card_facts(card), card


def read_tars(urls, skips: list, wanted: dict | None = None):
    """Tar members -> sample dicts {"__key__", "__url__", ext: bytes}, grouped by key.
    A cut-off, vanished or emptied tar ends its shard with one skip record (key "") saying
    how many samples it gave of those its card lists: an error inside a member, or a clean
    end short of the card's count (a cut between members leaves no error to catch).
    `wanted` ({shard name: keys}, pipeline.selection): only those samples are read, the
    other members of a local shard are seeked past; a shard with none is not opened."""
    for url in urls:
        keys = None if wanted is None else wanted.get(shards.shard_name(url), frozenset())
        if keys is not None and not keys:
            continue
        count, expected = 0, expected_count(url) if keys is None else len(keys)
        of = f" of {expected}" if expected is not None else ""
        want = None if keys is None else (lambda name, keys=keys: records.split_member(name)[0] in keys)
        try:
            with _open(url, seekable=keys is not None) as stream:
                for sample in _group(_members(stream, url, keys, want), url, skips):
                    count += 1
                    yield sample
        except DATA_ERRORS as e:
            skips.append((url, "", f"unreadable or cut-off tar after {count} samples{of}: {type(e).__name__}: {e}"))
            continue
        if expected is not None and count < expected:
            skips.append((url, "", f"cut-off tar after {count} samples{of}: it ends early"))


def _members(stream, url: str, keys, want):
    """A local shard read for chosen keys goes through its .idx when there is a usable one
    (only the chosen samples' headers and data are read); anything else, by its headers."""
    if keys is not None and not shards.has_scheme(url):
        path = shardset.index_path(Path(shards.shard_path(url)))
        try:
            index = shardset.parse_index(path.read_text(encoding="utf-8"), os.fstat(stream.fileno()).st_size)
        except (OSError, UnicodeDecodeError, ValueError):     # not usable: read the tar's headers
            index = None
        if index is not None:
            return tario.iter_indexed(stream, [s for s, key in zip(index.samples, index.keys()) if key in keys])
    return iter_tar(stream, want)


def _open(url: str, seekable: bool):
    """A local shard unbuffered when members will be seeked past: a buffered file refills
    8 KB after every seek, most of a small skipped member (a 12 KB PNG cost 8 KB anyway);
    reading through, and pipe: and remote URLs, go through webdataset's gopen."""
    if seekable and not shards.has_scheme(url):
        return open(shards.shard_path(url), "rb", buffering=0)
    if remote.is_object_url(url):          # s3://, gs://: a library (fsspec), never a shell
        return remote.open_url(url)
    return gopen(url, "rb")


def _group(members, url, skips):
    """Members -> samples. A key seen before in the shard is a duplicate: the first copy is
    kept, later ones are skipped with a record, whether they follow it at once (a member
    the sample already has starts the next copy) or come later in the shard. When the tar
    breaks, the sample being grouped is given out first with the members read whole (parse
    decides whether it is complete), then the error goes on to read_tars."""
    seen = set()
    for key, parts in records.group_members(members, DATA_ERRORS, split_repeats=True):
        if key in seen:
            skips.append((url, key, "duplicate key"))
            continue
        seen.add(key)
        yield {"__key__": key, "__url__": url, **dict(parts)}
# ---- end hostile-input handling ----


def parse(samples, skips: list, n_classes: int, keep: np.ndarray | None = None):
    """Sample dicts -> (sample, label, index, clean) with label and metadata checked.
    The subset filter (--max-train-samples) runs first, on the index alone: samples outside
    it cost a header parse, not a label check or a decode. An index outside the card's range
    or met twice (IndexGuard) is a skip with a record."""
    guard = IndexGuard()
    for s in samples:
        try:
            index, clean = records.parse_ids(s)
            if keep is not None and 0 <= index < len(keep) and not keep[index]:
                continue                    # outside the subset: not read, whatever else is wrong
            bad = guard.problem(s["__url__"], index)
            if bad is None and keep is not None and index >= len(keep):
                bad = f"index {index} outside the subset mask of {len(keep)}"
            if bad:
                skips.append((s["__url__"], s["__key__"], bad))
                continue
            label = records.label_in_range(records.parse_label(s["cls"]), n_classes)
            if not -1 <= clean < n_classes:
                raise ValueError(f"clean label {clean} outside [-1, {n_classes})")
            records.image_member(s)
        except DATA_ERRORS as e:
            skips.append((s["__url__"], s["__key__"], f"{type(e).__name__}: {e}"))
            continue
        yield s, label, index, clean


def shuffle(items, bufsize: int, rng: random.Random):
    """Reservoir-style shuffle buffer: memory bounded, deterministic for a given rng."""
    buf = []
    for item in items:
        buf.append(item)
        if len(buf) >= bufsize:
            yield buf.pop(rng.randrange(len(buf)))
    rng.shuffle(buf)
    yield from buf


def sample_rng(seed: int, epoch: int, index: int) -> random.Random:
    """Augmentation randomness per sample: the same crop for a sample whatever the worker
    count, and a resumed epoch can skip samples without replaying their draws."""
    return random.Random((seed * 1_000_003 + epoch) * 4_294_967_311 + index)


def skip_items(items, n: int):
    """Drop the first n items (a resumed epoch: they were trained on before the stop)."""
    for i, item in enumerate(items):
        if i >= n:
            yield item


def decode(items, spec: ReadSpec, skips: list, epoch: int = 0):
    """-> (uint8 (C, H, W) tensor, label, index, clean)."""
    for s, label, index, clean in items:
        try:
            data = checked_image(records.image_member(s)[1])
            arr = (augment.train_image(data, spec.aug, sample_rng(spec.seed, epoch, index)) if spec.train
                   else augment.eval_image(data, spec.aug))
        except IMAGE_ERRORS as e:
            skips.append((s["__url__"], s["__key__"], f"bad image: {type(e).__name__}: {records.error_text(e)}"))
            continue
        yield arr, label, index, clean


def checked_image(data: bytes) -> bytes:
    """The image bytes to decode: ValueError above records.MAX_PIXELS (read from the header,
    nothing decoded); a 16-bit greyscale PNG rescaled to 8 bits (PIL's "L" conversion would
    clip it almost white). Other images pass untouched, at the cost of a header read."""
    head = records.image_header(data)
    size = head[:2] if head else augment.open_image(data).size
    too_big = records.pixel_problem(*size)
    if too_big:
        raise ValueError(too_big)
    if head is None or head[2] <= 8 or data[:4] != b"\x89PNG":
        return data
    img = records.to_8bit(augment.open_image(data))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=0)   # rare: these were not written by make_shards
    return buf.getvalue()


def batched(items, batch_size: int, skips: list):
    """-> (images uint8 (B, C, H, W), labels, clean, index, skipped); the last batch may be
    short, but never a single sample (BatchNorm cannot train on one): a lone tail sample
    joins the batch before it. Skip records ride along with the next batch."""
    buf, pending = [], None
    for item in items:
        buf.append(item)
        if len(buf) == batch_size:
            if pending:
                yield _collate(pending, skips)
            pending, buf = buf, []
    if pending and len(buf) == 1:
        pending, buf = pending + buf, []
    if pending:
        yield _collate(pending, skips)
    if buf:
        yield _collate(buf, skips)


def _collate(buf, skips):
    taken = list(skips)
    skips.clear()
    if not buf:
        e = torch.zeros(0, dtype=torch.int64)
        return torch.zeros(0, 1, 1, 1, dtype=torch.uint8), e, e, e, taken
    arrs, labels, index, clean = zip(*buf)
    # NHWC memory behind an NCHW shape: the layout channels_last convolutions want, and one
    # copy per image instead of a stack plus a transpose
    images = torch.stack([a.permute(1, 2, 0) for a in arrs]).permute(0, 3, 1, 2)
    t = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return images, t(labels), t(clean), t(index), taken


class ShardStream(IterableDataset):
    """One epoch over this rank's shards; each DataLoader worker takes every W-th shard.
    Randomness is a function of (seed, epoch, rank, worker) only. Batches are tagged
    (worker, n) so the main process can put them in one fixed order and record how far each
    worker got; a last marker (n = -1) carries the worker's remaining skip records.
    `skip[w]` batches of worker w are passed over undecoded (resuming inside an epoch)."""

    def __init__(self, urls, spec: ReadSpec, n_classes: int, epoch: int, rank: int = 0,
                 keep: np.ndarray | None = None, skip: dict | None = None, wanted: dict | None = None):
        self.urls, self.spec, self.n_classes = urls, spec, n_classes
        self.epoch, self.rank, self.keep, self.skip, self.wanted = epoch, rank, keep, skip or {}, wanted

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        rng = random.Random(f"{self.spec.seed}-{self.epoch}-{self.rank}-{worker}")
        skips: list = []
        items = read_tars(for_worker(self.urls, worker, workers), skips, self.wanted)
        items = parse(items, skips, self.n_classes, self.keep)
        if self.spec.train:
            items = shuffle(items, self.spec.shuffle_buffer, rng)
        first = self.skip.get(worker, 0)
        items = decode(skip_items(items, first * self.spec.batch_size), self.spec, skips, self.epoch)
        for n, batch in enumerate(batched(items, self.spec.batch_size, skips), start=first):
            yield Tagged(*batch, worker, n)
        yield Tagged(*_collate([], skips), worker, -1)


def cpu_batches(urls, spec: ReadSpec, n_classes: int, epoch: int, workers: int, rank: int = 0,
                keep=None, skip: dict | None = None, wanted: dict | None = None):
    """Iterate pipeline.batch.Tagged batches for one epoch."""
    ds = ShardStream(urls, spec, n_classes, epoch, rank, keep, skip, wanted)
    loader = DataLoader(ds, batch_size=None, num_workers=workers,
                        pin_memory=torch.cuda.is_available(),
                        prefetch_factor=4 if workers else None,
                        generator=torch.Generator().manual_seed(spec.seed))  # not the global RNG
    yield from loader
