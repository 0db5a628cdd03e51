"""Convert a dataset into WebDataset tar shards, a dataset card and a Parquet manifest.

    python tools/make_shards.py FORMAT SOURCE --out DIR [--name NAME] [--shard-size N]
        [--resize SHORTER] [--quality Q] [--val-fraction F] [--workers K] [--seed S]
        [--label-fixes FILE] [--part I/N | --merge]

FORMAT: mnist | clothing1m | imagefolder | table. Output (docs/architecture.md section 4):
NAME-000.tar ... (train), NAME-val-000.tar, NAME-test-000.tar, an `.idx` beside each tar,
NAME.json (the card) and NAME.parquet (one row per sample). Samples are assigned to shards
before any work starts, so the output is byte-identical for any --workers. Shards of NAME in
--out that the new card does not list (an older conversion's) are removed once it is written.

Resumable: while a conversion runs, NAME.partial/ in --out holds its plan's fingerprint and one
record per finished shard; rerunning the same command after a kill writes only the missing
shards, and the folder is removed once the card is written. --part I/N writes the shards j
with j % N == I - 1 (no card); --merge checks every shard is there and writes card and manifest.
--label-fixes applies a reviewer's relabels and drops (pipeline.fixes) to the shards written."""
import argparse
import collections
import hashlib
import io
import itertools
import json
import os
import re
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# malloc, not Arrow's default mimalloc, for the manifest's Arrow arrays and the Parquet writer:
# mimalloc kept what they free resident (peak RSS at 10^5 samples 198 MB against 153 MB with
# malloc, measured on synth_clothing --n 100000); the bytes written are the same. Read when
# pyarrow is first imported, so only where make_shards runs as the command.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
import pyarrow  # noqa: E402,F401  (loaded here, after the allocator choice above)
from PIL import Image
from tqdm import tqdm

from pipeline import fixes as label_fixes
from pipeline import records
from pipeline.records import encode_sample
from pipeline.shards import DataError
from pipeline.writer import write_tar
from tools import shard_sources
from tools.shard_manifest import write_manifest
from tools.shard_progress import Progress, check_merge, part_of, write_json_atomic
from tools.source_columns import CHUNK, Records, fix_mmap_threshold, release_memory

FORMATS = ("mnist", "clothing1m", "imagefolder", "table")


def encode_image(source, resize: int, quality: int) -> tuple[bytes, str]:
    """-> (bytes, ext). Pixels become lossless PNG; files keep their bytes when they are
    JPEG or 8-bit PNG and no resize is asked, else they are re-encoded (never upscaled):
    16-bit images become 8-bit. Images above records.MAX_PIXELS raise ValueError (a skip),
    unless --resize brings them down."""
    if isinstance(source, np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(source).save(buf, format="PNG")
        return buf.getvalue(), "png"
    data = Path(source).read_bytes()
    try:
        img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:   # PIL's message names the buffer's address: not reproducible
        raise Image.UnidentifiedImageError("cannot identify image file") from None
    fmt = img.format
    if resize and min(img.size) > resize:
        return _resized(img, resize, quality), "jpg"
    too_big = records.pixel_problem(*img.size)
    if too_big:
        raise ValueError(f"{too_big}; " + (f"its shorter side is already <= --resize {resize}" if resize
                                           else "--resize downscales such images"))
    img.draft(img.mode, (64, 64))  # cheap full-file check: the decoder must reach the end
    img.load()
    if fmt == "JPEG" or (fmt == "PNG" and not _wide_png(data)):
        return data, "jpg" if fmt == "JPEG" else "png"
    buf = io.BytesIO()
    records.to_8bit(img).save(buf, format="PNG")
    return buf.getvalue(), "png"


def _wide_png(data: bytes) -> bool:
    """More than 8 bits per channel (the IHDR bit depth): readers would get them clipped."""
    head = records.image_header(data)
    return head is None or head[2] > 8


def _resized(img: Image.Image, resize: int, quality: int) -> bytes:
    """The shorter side at `resize`, as JPEG; JPEGs are decoded at a reduced scale (draft)."""
    img.draft("RGB", (img.size[0] * resize // min(img.size), img.size[1] * resize // min(img.size)))
    img = records.to_8bit(img).convert("RGB")
    s = resize / min(img.size)
    size = (max(resize, round(img.size[0] * s)), max(resize, round(img.size[1] * s)))
    too_big = records.pixel_problem(*size)
    if too_big:                   # a long thin strip: still too many pixels once resized
        raise ValueError(f"resized to {too_big}")
    img = img.resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_shard(job: dict) -> dict:
    """One shard: encode every record, skip the unreadable, write atomically, then its record
    in NAME.partial/ (after the tar's rename: a record names a complete shard, see done_shard)."""
    samples, skipped, skipped_index = [], [], []
    for key, label, clean, index, source in job["records"]:
        try:
            data, ext = encode_image(source, job["resize"], job["quality"])
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append({"key": key, "source": str(source), "reason": f"{type(e).__name__}: {e}"})
            skipped_index.append(int(index))
            continue
        src = "" if isinstance(source, np.ndarray) else str(source)
        samples.append(encode_sample(key, data, ext, label, index, clean, src))
    write_tar(Path(job["out"]) / job["file"], samples)
    first = next(iter(samples[0])).split(".", 1)[0] if samples else None
    record = {"file": job["file"], "split": job["split"], "count": len(samples), "first": first,
              "skipped": skipped, "skipped_index": skipped_index}
    write_json_atomic(Path(job["work"]) / "shards" / f"{job['file']}.json", record)
    return record


# ---------------------------------------------------------------------------- the plan

@dataclass
class Plan:
    """Which record goes to which shard, fixed before any work starts. splits: split ->
    (records [(key, label, clean, source)], global indices as int64); jobs: one dict per shard
    {split, file, start, stop} into its split's records. Compact on purpose: no per-sample
    object beyond the source's own records (the plan of 10^6 samples is one int64 array)."""
    splits: dict
    jobs: list[dict]
    num_indices: int


def plan(src: shard_sources.Source, args, fixes=None) -> Plan:
    """Global indices (train, then val, then test) and the shard each record goes to. Label
    fixes relabel records and leave dropped ones out; indices are those of the unfixed plan,
    so a fixes file written from an earlier conversion's manifest names the same samples."""
    splits, jobs, base = {}, [], 0
    for split in shard_sources.SPLITS:
        recs = src.splits.get(split, Records.from_tuples([]))
        index = np.arange(base, base + len(recs), dtype=np.int64)
        base += len(recs)
        if fixes is not None:
            recs, index = apply_fixes(recs, index, fixes)
        splits[split] = (recs, index)
        prefix = args.name if split == "train" else f"{args.name}-{split}"
        for start in range(0, len(recs), args.shard_size):
            jobs.append({"split": split, "file": f"{prefix}-{start // args.shard_size:03d}.tar",
                         "start": start, "stop": min(start + args.shard_size, len(recs))})
    return Plan(splits, jobs, base)


def apply_fixes(recs: Records, index: np.ndarray, fixes) -> tuple[Records, np.ndarray]:
    """Relabelled records and the dropped ones left out; index: the records' global indices."""
    labels = recs.labels.copy()
    for g, label in fixes.relabel.items():
        at = np.searchsorted(index, g)                  # index is sorted: one split's range
        if at < len(index) and index[at] == g:
            labels[at] = label
    keep = np.flatnonzero(~np.isin(index, np.fromiter(fixes.drop, np.int64, len(fixes.drop))))
    return recs.with_labels(labels).take(keep), index[keep]


def job_records(p: Plan, job: dict) -> list[tuple]:
    """(key, label, clean, index, source) of one shard, built when the shard is sent to a worker."""
    recs, index = p.splits[job["split"]]
    part = recs[job["start"]:job["stop"]]
    return [(key, label, clean, int(g), source)
            for (key, label, clean, source), g in zip(part, index[job["start"]:job["stop"]])]


def read_label_fixes(src: shard_sources.Source, args):
    """The --label-fixes file against this conversion's keys and global indices (the unfixed
    plan's: train, then val, then test)."""
    if not args.label_fixes:
        return None
    keys, base = {}, 0
    for split in shard_sources.SPLITS:
        recs = src.splits.get(split, Records.from_tuples([]))
        keys.update(zip(recs.keys.to_pylist(), range(base, base + len(recs))))
        base += len(recs)
    return label_fixes.read_fixes(args.label_fixes, keys, base, src.classes)


def fingerprint(p: Plan, args, fixes) -> str:
    """SHA-256 of what decides the output bytes: the options (not --workers, --part, --merge)
    and, per record, split, index, key, labels, source and the file's size. Sizes, not
    contents: a stat per file is cheap (0.65 s for 10^5 files, measured), reading them is the
    conversion itself."""
    h = hashlib.sha256(json.dumps(card_options(args, for_fingerprint=True), sort_keys=True).encode())
    h.update((fixes.sha256 if fixes else "").encode())
    for split, (recs, index) in p.splits.items():
        # the indices a chunk at a time: index.tolist() at once is ~36 MB of ints at 10^6
        indices = itertools.chain.from_iterable(index[s:s + CHUNK].tolist() for s in range(0, len(index), CHUNK))
        for (key, label, clean, source), g in zip(recs, indices):
            if isinstance(source, np.ndarray):
                size = hashlib.sha256(source.tobytes()).hexdigest()
            else:
                try:
                    size = os.stat(source).st_size
                except OSError:
                    size = -1                       # unreadable: a skip, decided in the worker
            path = source if isinstance(source, str) else ""
            h.update(f"{split}\t{g}\t{key}\t{label}\t{clean}\t{path}\t{size}\n".encode())
    return h.hexdigest()


def start_workers(workers: int) -> ProcessPoolExecutor | None:
    """The worker processes, started before the source is read: forked from a small parent,
    they do not carry the whole record list (copy-on-write pages get copied as soon as the
    garbage collector touches them), so a worker's memory does not grow with the dataset."""
    if workers < 2:
        return None
    pool = ProcessPoolExecutor(workers, initializer=die_with_parent)
    for f in [pool.submit(os.getpid) for _ in range(workers)]:   # one submit per idle-less worker
        f.result()
    return pool


def die_with_parent() -> None:
    """Worker start-up: a SIGKILLed make_shards must not leave workers writing shards that the
    rerun writes too (the same temporary names); Linux's PR_SET_PDEATHSIG kills them with it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                       # not Linux: an orphan stops after its shard (the queue is gone)


def run_jobs(p: Plan, todo: list[dict], args, work: Path, pool: ProcessPoolExecutor | None,
             done: int = 0) -> list[dict]:
    """Write the shards of `todo`; at most 2 per worker in flight, so the records of one shard
    exist only while it is written (no per-sample objects for the whole plan)."""
    bar = tqdm(total=sum(j["stop"] - j["start"] for j in p.jobs), initial=done, unit="img", desc="shards",
               disable=None)
    results = []

    def job(j):
        return {"split": j["split"], "file": j["file"], "out": str(args.out), "work": str(work),
                "resize": args.resize, "quality": args.quality, "records": job_records(p, j)}
    try:
        if pool is None:
            for j in todo:
                results.append(write_shard(job(j)))
                bar.update(j["stop"] - j["start"])
        else:
            pending = collections.deque()
            for j in todo:
                pending.append((j, pool.submit(write_shard, job(j))))
                while len(pending) >= 2 * args.workers or (pending and len(pending) == len(todo) - len(results)):
                    first, fut = pending.popleft()
                    results.append(fut.result())
                    bar.update(first["stop"] - first["start"])
    finally:
        bar.close()
    return results


def drop_empty_shards(results: list[dict], out: Path) -> list[dict]:
    """A shard whose every image was unreadable is an empty tar, which DALI refuses (its index
    needs a sample) and stock webdataset reads as an error: delete it and renumber the split's
    later shards, so names stay contiguous for brace patterns. Deterministic, like the rest."""
    for split in shard_sources.SPLITS:
        mine = [r for r in results if r["split"] == split]
        if all(r["count"] for r in mine):
            continue
        for r in mine:
            if not r["count"]:
                (out / r["file"]).unlink()
                (out / r["file"]).with_suffix(".idx").unlink()
        for i, r in enumerate([k for k in mine if k["count"]]):
            new = f"{r['file'].rsplit('-', 1)[0]}-{i:03d}.tar"
            if new != r["file"]:
                os.replace(out / r["file"], out / new)
                os.replace((out / r["file"]).with_suffix(".idx"), (out / new).with_suffix(".idx"))
                r["file"] = new
    return [r for r in results if r["count"]]


def card_options(args, for_fingerprint: bool = False) -> dict:
    """The options written to the card: --part and --merge are how the work was spread, not
    what it made (a merged card equals a one-machine card); --label-fixes only when given,
    so cards of conversions without it keep their bytes."""
    skip = {"part", "merge"} | ({"workers"} if for_fingerprint else set())
    if not args.label_fixes:
        skip.add("label_fixes")
    return {k: str(v) for k, v in sorted(vars(args).items()) if k not in skip}


def write_outputs(src, p: Plan, results: list[dict], args, fixes=None) -> dict:
    skipped = src.skipped + [s for r in results for s in r["skipped"]]
    results = drop_empty_shards(results, args.out)
    if not results:
        first = f" (first: {skipped[0]['source']}: {skipped[0]['reason']})" if skipped else ""
        raise DataError(f"no image converted: {len(skipped)} skipped{first}; nothing written")
    splits = {}
    for r in results:
        sp = splits.setdefault(r["split"], {"shards": [], "count": 0})
        sp["shards"].append({"file": r["file"], "count": r["count"]})
        sp["count"] += r["count"]
    card = {"name": args.name, "format": args.format, "classes": src.classes, "channels": src.channels,
            "augment": src.augment, "normalize": src.normalize, "splits": splits,
            "num_indices": p.num_indices, "skipped": skipped, "options": card_options(args)}
    if fixes is not None:
        card["label_fixes"] = {"file": str(args.label_fixes), "sha256": fixes.sha256,
                               "relabelled": fixes.n_relabelled, "dropped": fixes.n_dropped, "kept": fixes.n_kept}
    write_manifest(p, results, args.out / f"{args.name}.parquet")
    tmp = args.out / f"{args.name}.json.tmp"
    tmp.write_text(json.dumps(card, indent=1) + "\n")
    os.replace(tmp, args.out / f"{args.name}.json")   # the card last: it marks the set complete
    return card


def remove_stale_shards(out: Path, name: str, card: dict) -> list[str]:
    """Delete NAME-NNN / NAME-val-NNN / NAME-test-NNN tars and indexes in `out` that the new
    card does not list: left by an older conversion with other options, a brace pattern would
    still train on them. Runs after the card is written, so a kill in between leaves the new
    set complete with extra files (verify_shards names them), never a card without shards.
    Files another card in `out` lists are kept (a dataset named NAME-val, say)."""
    own = re.compile(rf"{re.escape(name)}(-val|-test)?-[0-9]+\.(tar|idx)")
    keep = _listed_files(card) | {f for other in out.glob("*.json") if other.name != f"{name}.json"
                                  for f in _listed_files(_maybe_card(other))}
    keep |= {f[:-4] + ".idx" for f in keep if f.endswith(".tar")}
    stale = sorted(p.name for p in out.iterdir() if own.fullmatch(p.name) and p.name not in keep)
    for f in stale:
        (out / f).unlink()
    return stale


def _listed_files(card: dict) -> set[str]:
    return {s.get("file") for sp in card.get("splits", {}).values() for s in sp.get("shards", [])}


def _maybe_card(path: Path) -> dict:
    try:
        card = json.loads(path.read_text())
        return card if isinstance(card, dict) and isinstance(card.get("splits"), dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}


def load_source(args) -> shard_sources.Source:
    if not args.source.exists():
        raise DataError(f"source not found: {args.source}")
    val = args.val_fraction if args.val_fraction is not None else (0.2 if args.format == "mnist" else 0.0)
    if args.format == "table":
        classes = args.classes.split(",") if args.classes else None
        src = shard_sources.table(args.source, val, args.seed, classes)
    else:
        src = getattr(shard_sources, args.format)(args.source, val, args.seed)
    if args.recipe:                                     # issue 10: e.g. CIFAR exported as images
        src.augment = dict(shard_sources.RECIPES[args.recipe])
    shard_sources.check_unique_keys(src)
    shard_sources.check_labels(src)
    return src


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("format", choices=FORMATS)
    p.add_argument("source", type=Path, help="MNIST idx folder, Clothing1M root, image folder or table file")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--name", default=None, help="dataset name (default: the format)")
    p.add_argument("--shard-size", type=int, default=5000, help="samples per shard")
    p.add_argument("--resize", type=int, default=0, help="store the shorter side at this size (JPEG; never upscales)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality when re-encoding")
    p.add_argument("--val-fraction", type=float, default=None, help="carve val from train when the source has none (mnist: 0.2)")
    p.add_argument("--classes", default="", help="table: comma-separated class names (label ids index into them)")
    p.add_argument("--workers", type=int, default=1, help="parallel processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val split")
    p.add_argument("--recipe", default="", choices=["", *shard_sources.RECIPES],
                   help="training recipe written to the card instead of the format's default "
                        "(cifar: 32x32, pad 4 + random 32 crop, flip)")
    p.add_argument("--label-fixes", type=Path, default=None,
                   help="a reviewer's fixes (review page CSV, key/index,label table, Label Studio export): "
                        "relabelled samples get the new label, dropped ones are left out")
    spread = p.add_mutually_exclusive_group()
    spread.add_argument("--part", default=None, metavar="I/N",
                        help="write only part I of N of the shards (no card); then run --merge")
    spread.add_argument("--merge", action="store_true",
                        help="check that every --part finished and write the card and manifest")
    args = p.parse_args(argv)
    args.name = args.name or args.format
    for flag, v, lo in (("--shard-size", args.shard_size, 1), ("--workers", args.workers, 1), ("--quality", args.quality, 1),
                        ("--resize", args.resize, 0)):
        if v < lo:
            p.error(f"{flag} must be >= {lo}")
    if args.val_fraction is not None and not 0 <= args.val_fraction < 1:
        p.error("--val-fraction must lie in [0, 1)")
    if "." in args.name or "/" in args.name:
        p.error("--name must not contain '.' or '/'")
    if args.part is not None:
        m = re.fullmatch(r"([0-9]+)/([0-9]+)", args.part)
        if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
            p.error(f"--part must be I/N with 1 <= I <= N, got {args.part!r}")
        args.part = (int(m.group(1)), int(m.group(2)))
    return args


def convert(args) -> tuple[dict | None, list[str]]:
    """(card, stale files removed); card None after a --part run."""
    pool = start_workers(args.workers)
    try:
        return convert_with(args, pool)
    finally:   # on an error too: no worker may go on writing shards after main() returns
        if pool:
            pool.shutdown(cancel_futures=True)


def convert_with(args, pool) -> tuple[dict | None, list[str]]:
    src = load_source(args)
    release_memory()
    for note in src.notes:
        print(f"make_shards: note: {note}", file=sys.stderr)
    fixes = read_label_fixes(src, args)
    p = plan(src, args, fixes)
    args.out.mkdir(parents=True, exist_ok=True)
    progress = Progress(args.out, args.name)
    resuming = progress.open(fingerprint(p, args, fixes), must_exist=args.merge)
    release_memory()
    mine = [j for n, j in enumerate(p.jobs) if not args.part or part_of(n, args.part[1]) == args.part[0]]
    done = {j["file"]: rec for j in mine if resuming and (rec := progress.done_shard(j))}
    if args.merge:
        check_merge(p.jobs, done, progress)
    elif done:
        print(f"make_shards: resuming: {len(done)} of {len(mine)} shard(s) already complete", file=sys.stderr)
    todo = [j for j in mine if j["file"] not in done]
    n_done = sum(j["stop"] - j["start"] for j in p.jobs if j["file"] in done)
    written = {r["file"]: r for r in run_jobs(p, todo, args, progress.dir, pool, n_done)}
    results = [{**j, **(done.get(j["file"]) or written[j["file"]])} for j in mine]
    if args.part:
        path = progress.write_part(*args.part, results)
        print(f"wrote part {args.part[0]}/{args.part[1]} ({len(results)} shard(s), record {path}); "
              "run the same command with --merge instead of --part once every part is done")
        return None, []
    card = write_outputs(src, p, results, args, fixes)
    stale = remove_stale_shards(args.out, args.name, card)
    progress.remove()            # after the card: a kill before this resumes to the same bytes
    return card, stale


def main(argv=None) -> int:
    args = parse_args(argv)
    fix_mmap_threshold()
    try:
        card, stale = convert(args)
    except (DataError, OSError) as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    if card is None:
        return 0
    counts = ", ".join(f"{k} {v['count']}" for k, v in card["splits"].items())
    print(f"wrote {args.out}/{args.name}.json: {counts}; skipped {len(card['skipped'])}")
    if "label_fixes" in card:
        f = card["label_fixes"]
        print(f"label fixes from {f['file']}: {f['relabelled']} relabelled, {f['dropped']} dropped")
    if stale:
        tars = [f for f in stale if f.endswith(".tar")]
        print(f"make_shards: removed {len(tars)} shard(s) of an older conversion that the new card does not "
              f"list: {', '.join(tars[:5])}{' ...' if len(tars) > 5 else ''}", file=sys.stderr)
    for s in card["skipped"][:10]:
        print(f"  skipped {s['source']}: {s['reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
