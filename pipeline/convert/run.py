"""One conversion, start to end: read the source, plan, resume what a killed run finished,
write the missing shards (or one --part of them), then the card and manifest (--merge)."""
import argparse
import sys
import tempfile
from pathlib import Path

from pipeline import remote, safe_io
from pipeline.convert import hf_parquet, sources, wds_adopt
from pipeline.convert.bucket import BucketOut
from pipeline.convert.columns import release_memory
from pipeline.convert.jobs import run_jobs, start_workers
from pipeline.convert.outputs import remove_stale_shards, write_outputs
from pipeline.convert.plan import fingerprint, plan, read_label_fixes
from pipeline.convert.progress import Progress, check_merge, part_of
from pipeline.shards import DataError

FORMATS = ("mnist", "clothing1m", "imagefolder", "table", "hf", "wds")


def load_source(args) -> sources.Source:
    if remote.is_object_url(args.source) and args.format != "wds":
        raise DataError(f"source {args.source}: only the wds format reads its source from a bucket")
    if not remote.is_object_url(args.source) and not args.source.exists():
        raise DataError(f"source not found: {args.source}")
    val = args.val_fraction if args.val_fraction is not None else (0.2 if args.format == "mnist" else 0.0)
    if args.format == "table":
        classes = args.classes.split(",") if args.classes else None
        src = sources.table(args.source, val, args.seed, classes)
    elif args.format == "hf":                          # a Hugging Face Parquet dataset (issue 28)
        src = hf_parquet.hf(args.source, val, args.seed, args.classes.split(",") if args.classes else None)
    elif args.format == "wds":                         # existing WebDataset shards, adopted (issue 28)
        src = wds_adopt.wds(args.source, val, args.seed, args.classes, args.label_field or "cls")
    else:
        src = getattr(sources, args.format)(args.source, val, args.seed)
    if args.recipe:                                     # issue 10: e.g. CIFAR exported as images
        src.augment = dict(sources.RECIPES[args.recipe])
    sources.check_unique_keys(src)
    sources.check_labels(src)
    return src


def convert(args) -> tuple[dict | None, list[str]]:
    """(card, stale files removed); card None after a --part run. --out s3://... (or gs://):
    the shards are written into a local staging folder and uploaded one by one
    (pipeline/convert/bucket.py); the staging folder is removed however the run ends (the
    bucket keeps what a rerun resumes from)."""
    if remote.is_object_url(args.out):
        remote.filesystem(args.out)       # s3fs or gcsfs missing: say so before the source is read
    pool = start_workers(args.workers)
    staging = tempfile.mkdtemp(prefix=f"make_shards-{args.name}-") if remote.is_object_url(args.out) else None
    try:
        return convert_with(args, pool, staging)
    finally:   # on an error too: no worker may go on writing shards after main() returns
        if pool:
            pool.shutdown(cancel_futures=True)
        if staging:
            safe_io.remove(staging, missing_ok=True)


def convert_with(args, pool, staging: str | None = None) -> tuple[dict | None, list[str]]:
    src = load_source(args)
    release_memory()
    for note in src.notes:
        print(f"make_shards: note: {note}", file=sys.stderr)
    fixes = read_label_fixes(src, args)
    p = plan(src, args, fixes)
    if staging:        # the writer's --out is the staging folder; the fingerprint keeps the URL
        bucket, local = BucketOut(args.out, args.name, Path(staging)), argparse.Namespace(**{**vars(args), "out": Path(staging)})
        progress = bucket
    else:
        bucket, local = None, args
        safe_io.out_dir(args.out)
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
    written = {r["file"]: r for r in run_jobs(p, todo, local, progress.dir, pool, n_done,
                                              on_done=bucket.publish if bucket else None)}
    results = [{**j, **(done.get(j["file"]) or written[j["file"]])} for j in mine]
    if args.part:
        path = progress.write_part(*args.part, results)
        print(f"wrote part {args.part[0]}/{args.part[1]} ({len(results)} shard(s), record {path}); "
              "run the same command with --merge instead of --part once every part is done")
        return None, []
    card = write_outputs(src, p, results, local, fixes, bucket)
    stale = bucket.remove_stale_shards(card) if bucket else remove_stale_shards(args.out, args.name, card)
    progress.remove()            # after the card: a kill before this resumes to the same bytes
    return card, stale
