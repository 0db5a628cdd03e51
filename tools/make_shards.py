"""Convert a dataset into WebDataset tar shards, a dataset card and a Parquet manifest.

    python tools/make_shards.py FORMAT SOURCE --out DIR [--name NAME] [--shard-size N]
        [--resize SHORTER] [--quality Q] [--val-fraction F] [--workers K] [--seed S]

FORMAT: mnist | clothing1m | imagefolder | table. Output (design.md section 4):
NAME-000.tar ... (train), NAME-val-000.tar, NAME-test-000.tar, an `.idx` beside each tar,
NAME.json (the card) and NAME.parquet (one row per sample). Samples are assigned to shards
before any work starts, so the output is byte-identical for any --workers. Shards of NAME in
--out that the new card does not list (an older conversion's) are removed once it is written."""
import argparse
import io
import json
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from pipeline import records
from pipeline.records import encode_sample
from pipeline.shards import DataError
from pipeline.writer import write_tar
from tools import shard_sources

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
    """One shard: encode every record, skip the unreadable, write atomically."""
    samples, rows, skipped = [], [], []
    for key, label, clean, index, source in job["records"]:
        try:
            data, ext = encode_image(source, job["resize"], job["quality"])
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append({"key": key, "source": str(source), "reason": f"{type(e).__name__}: {e}"})
            continue
        src = "" if isinstance(source, np.ndarray) else str(source)
        samples.append(encode_sample(key, data, ext, label, index, clean, src))
        rows.append({"key": key, "split": job["split"], "shard": job["file"], "index": index,
                     "label": label, "clean_label": clean, "source": src})
    write_tar(Path(job["out"]) / job["file"], samples)
    return {"file": job["file"], "split": job["split"], "count": len(samples), "rows": rows, "skipped": skipped}


def plan(src: shard_sources.Source, args) -> list[dict]:
    """Global indices (train, then val, then test) and the shard each record goes to."""
    jobs, index = [], 0
    for split in shard_sources.SPLITS:
        recs = src.splits.get(split, [])
        prefix = args.name if split == "train" else f"{args.name}-{split}"
        for start in range(0, len(recs), args.shard_size):
            chunk = recs[start:start + args.shard_size]
            jobs.append({"split": split, "file": f"{prefix}-{start // args.shard_size:03d}.tar",
                         "out": str(args.out), "resize": args.resize, "quality": args.quality,
                         "records": [(k, y, c, index + i, s) for i, (k, y, c, s) in enumerate(chunk)]})
            index += len(chunk)
    return jobs


def run_jobs(jobs: list[dict], workers: int) -> list[dict]:
    bar = tqdm(total=sum(len(j["records"]) for j in jobs), unit="img", desc="shards", disable=None)
    results = []
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        for res in (pool.map(write_shard, jobs) if pool else map(write_shard, jobs)):
            results.append(res)
            bar.update(res["count"] + len(res["skipped"]))
    finally:   # on an error too: no worker may go on writing shards after main() returns
        if pool:
            pool.shutdown(cancel_futures=True)
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
                for row in r["rows"]:
                    row["shard"] = new
    return [r for r in results if r["count"]]


def write_outputs(src, results: list[dict], args) -> dict:
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
            "num_indices": sum(len(v) for v in src.splits.values()),
            "skipped": skipped, "options": {k: str(v) for k, v in sorted(vars(args).items())}}
    rows = [row for r in results for row in r["rows"]]
    table = pa.Table.from_pylist(rows, schema=pa.schema([
        ("key", pa.string()), ("split", pa.string()), ("shard", pa.string()), ("index", pa.int64()),
        ("label", pa.int64()), ("clean_label", pa.int64()), ("source", pa.string())]))
    tmp = args.out / f"{args.name}.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, args.out / f"{args.name}.parquet")
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
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        src = load_source(args)
        for note in src.notes:
            print(f"make_shards: note: {note}", file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)
        results = run_jobs(plan(src, args), args.workers)
        card = write_outputs(src, results, args)
        stale = remove_stale_shards(args.out, args.name, card)
    except (DataError, OSError) as e:
        print(f"make_shards: error: {e}", file=sys.stderr)
        return 2
    counts = ", ".join(f"{k} {v['count']}" for k, v in card["splits"].items())
    print(f"wrote {args.out}/{args.name}.json: {counts}; skipped {len(card['skipped'])}")
    if stale:
        tars = [f for f in stale if f.endswith(".tar")]
        print(f"make_shards: removed {len(tars)} shard(s) of an older conversion that the new card does not "
              f"list: {', '.join(tars[:5])}{' ...' if len(tars) > 5 else ''}", file=sys.stderr)
    for s in card["skipped"][:10]:
        print(f"  skipped {s['source']}: {s['reason']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
