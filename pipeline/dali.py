"""The DALI backend: the same shards, AugSpec and batch tuples as pipeline/cpu.py, with the
decode and augmentation in NVIDIA DALI ("mixed" = nvJPEG on the GPU when one is present,
"cpu" otherwise). One pipeline per rank for the whole run (DaliStream), built over the rank's
shards of the loader's shard_order and reset at each epoch; seeded by (seed, rank).

What DALI cannot do is drop a sample inside the graph, so the label check and the subset mask
(`keep`) run in torch after each DALI batch, and a small re-batcher restores the CPU backend's
batching (full batches, a lone tail sample joins the batch before it: BatchNorm needs >= 2)."""
import functools
import os
from dataclasses import dataclass
import re
import zlib

import numpy as np
import torch

from pipeline import records, shardset
from pipeline.cpu import ReadSpec, expected_count, facts_for
from pipeline.shards import DataError

try:
    from nvidia.dali import fn, pipeline_def, types
    import nvidia.dali.math as dmath
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
except ImportError:          # the `dali` extra is optional; the CPU backend needs none of it
    fn = None

INSTALL = "--backend dali needs NVIDIA DALI: pip install '.[dali]' (nvidia-dali-cuda130==2.4.0)"
OUTPUTS = ["images", "cls", "ids", "source"]


def dali_available() -> bool:
    return fn is not None


def gpu_decode_available() -> bool:
    """DALI plus a CUDA device: the only case where "mixed" (GPU) decoding can run."""
    return dali_available() and torch.cuda.is_available()


def _local(url: str) -> str:
    """DALI reads local files only (no pipe:, no http): say so at start-up, not mid-epoch.
    (A local shard that does not exist is skipped with a record, as the CPU backend does.)"""
    path = url.removeprefix("file:")
    if ":" in path.split("/", 1)[0]:
        raise DataError(f"--backend dali reads local shard files only: {url}")
    return path


@dataclass(frozen=True)
class IndexScan:
    samples: int            # lines (samples) in the index
    usable: int             # samples DALI will read and the CPU backend would keep
    skips: tuple            # (shard, key, reason) records
    drops: frozenset        # image data offsets of later copies of a key: dropped after DALI
    end: int                # bytes the index needs the tar to have


@functools.lru_cache(maxsize=4096)
def _scan_index(path: str, mtime: float) -> IndexScan:
    """What a shard's DALI .idx (v1.1 or v1.2 lines of `ext offset size [name]` per member)
    says before DALI reads it. With missing_component_behavior="skip" DALI drops a sample
    lacking a member without a word, and reads a repeated key twice: reading the index first
    gives those samples the same skip records the CPU backend writes (a later copy of a key is
    dropped after DALI by its offset; a copy right after the first is one index line, which
    DALI reads as one sample). Cached per (path, mtime): epochs re-read it."""
    usable, skips, drops, seen = 0, [], set(), set()
    tar = _Peek(path)
    try:
        with open(shardset.index_path(path), encoding="utf-8", errors="replace") as f:
            index = shardset.parse_index(f.read(), strict=False)
        keys = index.keys() or [""] * len(index.samples)       # v1.1 names no member
        for members, key in zip(index.samples, keys):
            exts = [m[0] for m in members]
            if key and key in seen:            # ---- duplicate keys, as the CPU backend
                skips.append((path, key, "duplicate key"))
                drops.update(o for e, o, _, _ in members if e in ("jpg", "png"))
                continue
            seen.add(key)
            if len(set(exts)) < len(exts):
                skips.append((path, key, "duplicate key"))
            # the reason texts of the CPU backend's KeyErrors
            need = [what for what, ok in (("no jpg or png member", set(exts) & {"jpg", "png"}),
                                          ("cls", "cls" in exts), ("ids", "ids" in exts)) if not ok]
            if need:
                skips.append((path, key, f"KeyError: {need[0]!r}"))
                continue
            image = next((o, z) for e, o, z, _ in members if e in ("jpg", "png"))
            why = _image_problem(tar.head(*image))
            if why:                            # dropped after DALI by its offset, like a repeat
                skips.append((path, key, why))
                drops.add(image[0])
            else:
                usable += 1
    except ValueError as e:
        raise DataError(f"{shardset.index_path(path)}: not a DALI index ({type(e).__name__}: {e}); --backend cpu "
                        "needs none") from None
    finally:
        tar.close()
    if not usable and any("ids" in s[2] for s in skips):
        raise DataError(f"{path}: no sample has an .ids member (not written by tools/make_shards.py?): "
                        "use --backend cpu, or re-shard")
    return IndexScan(len(index.samples), usable, tuple(skips), frozenset(drops), index.end)


class _Peek:
    """The first bytes of members of one tar, for header checks; opened on first use."""
    SIZE = 1 << 16                      # a JPEG's EXIF block may put its SOF this far in

    def __init__(self, path: str):
        self.path, self.f = path, None

    def head(self, offset: int, size: int) -> bytes:
        if self.f is None:
            self.f = open(self.path, "rb")
        self.f.seek(offset)
        return self.f.read(min(size, self.SIZE))

    def close(self):
        if self.f is not None:
            self.f.close()


def _image_problem(head: bytes) -> str | None:
    """Why DALI must not decode an image, from its header: above records.MAX_PIXELS (the CPU
    backend's reason text), or a 16-bit PNG (the CPU backend rescales it; DALI's decoder has
    not been checked to, and white images would train silently). Formats other than PNG and
    JPEG are not checked here."""
    info = records.image_header(head)
    if info is None:
        return None
    too_big = records.pixel_problem(*info[:2])
    if too_big:
        return f"bad image: ValueError: {too_big}"
    if head[:4] == b"\x89PNG" and info[2] > 8:
        return ("bad image: 16-bit PNG: --backend dali does not read these (--backend cpu does; "
                "tools/make_shards.py stores them as 8-bit)")
    return None


class SeenIndices:
    """The sample indices one DALI epoch has given out, and their valid range [0, n) (n from
    the card; None when there is none: any int64 >= 0, tracked in a set)."""

    def __init__(self, n: int | None):
        self.n = n
        self.bits = np.zeros(n, dtype=bool) if n is not None else None
        self.set: set[int] = set()

    def outside(self, index: np.ndarray) -> np.ndarray:
        return (index < 0) | (index >= self.n) if self.n is not None else index < 0

    def repeats(self, index: np.ndarray) -> np.ndarray:
        """Which of `index` (all in range) were given out before, or earlier in this array;
        marks them all as given out."""
        again = np.ones(len(index), dtype=bool)
        again[np.unique(index, return_index=True)[1]] = False
        if self.bits is not None:
            again |= self.bits[index]
            self.bits[index] = True
        else:
            again |= np.array([int(i) in self.set for i in index], dtype=bool)
            self.set.update(index.tolist())
        return again


def _augment(encoded, spec: ReadSpec, device: str):
    """The AugSpec of pipeline/augment.py in DALI ops -> uint8 CHW. EXIF orientation is
    ignored (adjust_orientation=False) because PIL, in the CPU backend, ignores it too."""
    aug, train = spec.aug, spec.train
    kind = types.GRAY if aug.channels == 1 else types.RGB
    mirror = fn.random.coin_flip() if train and aug.flip else 0
    crop = aug.crop if train else "eval"
    # rounding="truncate" makes a centred crop start at (w - size) // 2 like the CPU code
    # ("round" would land one pixel right on odd margins). Random crops draw the normalised
    # start u in [0, 1): offsets 0 .. w - size - 1 (the CPU draws 0 .. w - size; one pixel).
    finish = functools.partial(fn.crop_mirror_normalize, dtype=types.UINT8, output_layout="CHW",
                               mirror=mirror, rounding="truncate", out_of_bounds_policy="pad")
    if crop == "random_resized":
        # Fused decode + crop: libjpeg-turbo / nvJPEG decode only the window (much cheaper than
        # fn.random_resized_crop after a full decode), with torchvision's area/ratio rule.
        img = fn.decoders.image_random_crop(encoded, device=device, output_type=kind,
                                            adjust_orientation=False, random_area=list(aug.scale),
                                            random_aspect_ratio=list(aug.ratio))
        return finish(fn.resize(img, size=[aug.size, aug.size], subpixel_scale=False))
    img = fn.decoders.image(encoded, device=device, output_type=kind, adjust_orientation=False)
    if crop == "pad_random":
        # pad by `pad` then a random size crop == a slice starting in [-pad, h + pad - size],
        # zero-filled where it leaves the image; the start needs (h, w) before decoding.
        hw = fn.peek_image_shape(encoded, adjust_orientation=False)[0:2]
        u = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        start = dmath.floor(u * (hw + (2 * aug.pad - aug.size + 1))) - aug.pad
        img = fn.slice(img, start=fn.cast(start, dtype=types.INT32), shape=[aug.size, aug.size],
                       axis_names="HW", out_of_bounds_policy="pad", fill_values=0)
        return finish(img)
    # random / none / eval: shorter side to `resize` (or `size`), then a random or centred crop.
    # subpixel_scale=False maps the whole image onto the rounded size, as PIL's resize does.
    img = fn.resize(img, resize_shorter=aug.resize or aug.size, subpixel_scale=False)
    pos = {f"crop_pos_{a}": fn.random.uniform(range=[0.0, 1.0]) for a in "xy"} if crop == "random" else {}
    return finish(img, crop=[aug.size, aug.size], **pos)


def _build(urls: list[str], spec: ReadSpec, seed: int, threads: int):
    gpu = torch.cuda.is_available()
    idx = [shardset.index_path(u) for u in urls]     # DALI takes indexes for all shards or for none
    idx = idx if all(os.path.isfile(p) for p in idx) else None

    @pipeline_def(batch_size=spec.batch_size, num_threads=threads, seed=seed,
                  device_id=torch.cuda.current_device() if gpu else None)
    def graph():
        images, cls, ids = fn.readers.webdataset(
            paths=urls, index_paths=idx, ext=["jpg;png", "cls", "ids"],
            dtypes=[types.UINT8, types.UINT8, types.INT64], missing_component_behavior="skip",
            random_shuffle=spec.train, initial_fill=max(1, spec.shuffle_buffer),
            pad_last_batch=True, name="Reader")
        # "tar:offset:member" of each sample, only for the skip records of bad labels
        source = fn.get_property(images, key="source_info")
        out = _augment(images, spec, "mixed" if gpu else "cpu")
        # cls is ASCII of varying length: fn.pad zero-fills to the batch's longest
        return out, fn.pad(cls, fill_value=0), ids, fn.pad(source, fill_value=0)

    # pad_last_batch + PARTIAL: the epoch's last batch is cut to the real samples, so every
    # sample is read exactly once per epoch. (The iterator builds the pipeline.)
    return DALIGenericIterator(graph(), OUTPUTS, reader_name="Reader", auto_reset=False,
                               last_batch_policy=LastBatchPolicy.PARTIAL)


def _labels(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, parsed) from zero-padded ASCII rows (B, L): plain decimal rows in numpy (a
    Python parse per sample would cost the training process ~1 ms per 256-batch); others
    (a sign, spaces, junk) are left for records.parse_label, which says what is wrong."""
    digit, used = (raw >= 48) & (raw <= 57), raw != 0
    length = used.sum(1)
    parsed = (digit == used).all(1) & (length > 0) & (length < 19)     # int64 holds 18 digits
    power = np.clip(length[:, None] - 1 - np.arange(raw.shape[1]), 0, None)
    labels = ((raw.astype(np.int64) - 48) * 10 ** power * digit).sum(1)
    return labels, parsed


def _where(out: dict, i: int) -> tuple[str, str]:
    """(shard, key) of sample i of a DALI batch, from its "tar:offset:member" source info."""
    url, _, member = out["source"][i].cpu().numpy().tobytes().rstrip(b"\0").decode().rpartition(":")
    return url.rsplit(":", 1)[0], records.split_member(member)[0]


def _parse(out: dict, n_classes: int, keep, skips: list, drops: frozenset = frozenset(),
           seen: SeenIndices | None = None):
    """A DALI batch -> (images, labels, clean, index) of the samples the CPU backend keeps:
    in the subset first (no label check for the others), then with an index in the card's
    range given out once this epoch (`seen`; the first copy DALI's shuffle meets is kept),
    then with a valid cls label. `drops`: (shard, image offset) of repeated keys, bombs and
    16-bit PNGs, already recorded by _scan_index."""
    ids = out["ids"].cpu()
    index, clean = ids[:, 1].contiguous(), ids[:, 2].contiguous()
    ok = np.ones(len(ids), dtype=bool)
    if drops:           # only shards with a dropped sample pay for this Python loop
        for i in range(len(ok)):
            src = out["source"][i].cpu().numpy().tobytes().rstrip(b"\0").decode()
            url, off, _ = src.rsplit(":", 2)
            ok[i] = (url, int(off)) not in drops
    i = index.numpy()
    if keep is not None:
        kept = (i >= 0) & (i < len(keep)) & keep[i.clip(0, len(keep) - 1)]
        ok &= kept | (seen.outside(i) if seen is not None else False)   # outside: recorded below
    if seen is not None:
        _check_indices(out, i, ok, seen, skips)
    raw = out["cls"].cpu().numpy()
    labels, parsed = _labels(raw)
    for i in np.flatnonzero(ok & ~(parsed & (labels >= 0) & (labels < n_classes))).tolist():
        try:        # the CPU backend's checks and messages
            labels[i] = records.label_in_range(records.parse_label(raw[i].tobytes().rstrip(b"\0")), n_classes)
        except (ValueError, UnicodeDecodeError) as e:
            skips.append((*_where(out, i), f"{type(e).__name__}: {e}"))
            ok[i] = False
    labels, images = torch.from_numpy(labels), out["images"]
    if not ok.all():
        mask = torch.from_numpy(ok)
        images = images[mask.to(images.device)]
        labels, clean, index = labels[mask], clean[mask], index[mask]
    return images, labels, clean, index


def _check_indices(out: dict, index: np.ndarray, ok: np.ndarray, seen: SeenIndices, skips: list) -> None:
    """Clear `ok` with a record for an index outside the card's range or given out before:
    the CPU backend's reasons (its manifest check is not made: which copy DALI's shuffle
    meets first is the one kept)."""
    bad = ok & seen.outside(index)
    for j in np.flatnonzero(bad).tolist():
        skips.append((*_where(out, j), f"index {index[j]} outside [0, {seen.n if seen.n is not None else 2**63})"))
    ok &= ~bad
    cand = np.flatnonzero(ok)
    for j in cand[seen.repeats(index[cand])].tolist():
        skips.append((*_where(out, j), f"duplicate index {index[j]}: read before in this pass"))
        ok[j] = False


def _rebatch(parts, batch_size: int, skips: list):
    """Filtered chunks -> batches exactly as pipeline.cpu.batched cuts them. An unfiltered
    DALI batch passes through without a copy."""
    buf, have, pending = [], 0, None
    for chunk in parts:
        buf.append(chunk)
        have += len(chunk[1])
        while have >= batch_size:
            cat = buf[0] if len(buf) == 1 else [torch.cat(t) for t in zip(*buf)]
            head, rest = [t[:batch_size] for t in cat], [t[batch_size:] for t in cat]
            buf, have = ([rest] if len(rest[1]) else []), have - batch_size
            if pending is not None:
                yield _emit(pending, skips)
            pending = head
    tail = ([torch.cat(t) for t in zip(*buf)] if buf else None)
    if pending is not None and have == 1:
        pending, tail = [torch.cat(t) for t in zip(pending, tail)], None
    if pending is not None:
        yield _emit(pending, skips)
    if tail is not None or skips:
        yield _emit(tail, skips)


def _emit(batch, skips: list):
    taken = list(skips)
    skips.clear()
    if batch is None:                   # skip records only: the CPU backend's empty batch
        e = torch.zeros(0, dtype=torch.int64)
        batch = torch.zeros(0, 1, 1, 1, dtype=torch.uint8), e, e, e
    return (*batch, taken)


class DaliStream:
    """One rank's DALI pipeline, built once and reset at each epoch: building one costs
    about a second (nvJPEG and memory set-up), a whole epoch of small datasets. Its
    randomness is a function of (seed, rank) and of the epochs read before, so a resumed
    run is exact only with the CPU backend."""

    def __init__(self, urls, spec: ReadSpec, n_classes: int, workers: int, rank: int = 0):
        if not dali_available():
            raise DataError(INSTALL)
        self.spec, self.n_classes, self.it = spec, n_classes, None
        self.skips, self.mine, self.drops = [], [], set()
        for url in urls:
            path = _local(url)
            # ---- vanished, cut-off and emptied shards are skipped with one record ----
            expected = expected_count(path)
            of = f" of {expected}" if expected is not None else ""
            if not os.path.isfile(path):
                self.skips.append((path, "", f"unreadable or cut-off tar after 0 samples{of}: not found"))
                continue
            if os.path.isfile(shardset.index_path(path)):
                scan = _scan_index(path, os.path.getmtime(path))
                size = os.path.getsize(path)
                if scan.end > size:  # DALI would stop the whole run here; it reads no part of a tar
                    self.skips.append((path, "", f"cut-off tar after 0 samples{of}: {size} of the "
                                       f"{scan.end} bytes its index needs; DALI reads whole shards "
                                       "only (--backend cpu reads the samples before the cut)"))
                    continue
                if expected is not None and scan.samples < expected:
                    self.skips.append((path, "", f"cut-off tar after {scan.samples} samples{of}: it ends early"))
                self.skips += scan.skips
                self.drops.update((path, off) for off in scan.drops)
                if not scan.usable:   # DALI rejects an empty shard's index ("sample count must be positive")
                    continue
            self.mine.append(path)
        facts = [facts_for(u)[0] for u in urls[:1]]
        self.num_indices = facts[0].num_indices if facts and facts[0] else None
        self.seed = zlib.crc32(f"{spec.seed}-{rank}".encode()) & 0x7FFFFFFF
        self.threads = max(1, workers)

    def __call__(self, epoch: int = 0, keep=None):
        """(images, labels, clean, index, skipped) batches of one epoch; `keep`: this epoch's
        subset mask by global index (None: all), applied after decoding."""
        skips = list(self.skips)          # per-shard problems found in the indexes, every epoch
        if not self.mine:
            yield from _rebatch([], self.spec.batch_size, skips)
            return
        try:
            if self.it is None:
                self.it = _build(self.mine, self.spec, self.seed, self.threads)
            else:
                self.it.reset()
            seen = SeenIndices(self.num_indices)
            parts = (_parse(out[0], self.n_classes, keep, skips, self.drops, seen) for out in self.it)
            yield from _rebatch(parts, self.spec.batch_size, skips)
        except RuntimeError as e:
            self.it = None
            if "Critical error" not in str(e):
                raise                       # not DALI's data error: a bug, keep its traceback
            # DALI stops the whole pipeline on an undecodable image or a cut-off tar (it has no
            # per-sample skip): one line saying which operator failed and why.
            op = re.search(r"operator `([^`]+)`", str(e))
            why = str(e).partition("encountered:")[2].strip().split("\n")[0]
            raise DataError(f"DALI failed reading {len(self.mine)} shard(s) from {self.mine[0]}: "
                            f"{op.group(1) if op else 'pipeline'}: {why or str(e)[:200]} "
                            "(--backend cpu skips damaged samples; tools/verify_shards.py lists them)") from None


def dali_batches(urls, spec: ReadSpec, n_classes: int, epoch: int, workers: int, rank: int = 0,
                 keep=None):
    """One epoch from a fresh DaliStream (tests and one-off reads); the Loader keeps its stream."""
    yield from DaliStream(urls, spec, n_classes, workers, rank)(epoch, keep)
