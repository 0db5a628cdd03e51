"""Check a shard set written by tools/make_shards.py against its dataset card and manifest.

    python tools/verify_shards.py DIR --name NAME [--workers K] [--show N]

Reads every tar listed in DIR/NAME.json with the trainer's own tar reader and checks: each
shard exists, reads to its end and holds the card's sample count; each split's count; every
sample has one 8-bit image of at most records.MAX_PIXELS pixels that decodes in full (larger
ones are named without decoding them; tar members above 256 MiB end the shard's reading with a
problem), an integer label in [0, classes), and index /
clean-label metadata agreeing with its label; every key appears exactly once in the set and
every index is unique and below the card's num_indices; the manifest (NAME.parquet) has the
same keys, with the same split, shard, index, label and clean label, so the same counts per
split and per class; each DALI index (.idx) matches its tar; no stray NAME-*.tar or
unfinished *.tmp file is left in DIR.

Exit code 0 with a one-line summary when all holds; 1 with the list of problems (the first
N, default 50, and how many more); 2 for bad arguments."""
import argparse
import os
import sys
import time
from pathlib import Path

from pipeline.convert.verify import report, verify


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir", type=Path, help="the shard folder (--out of make_shards)")
    p.add_argument("--name", required=True, help="dataset name: DIR/NAME.json is the card")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decode processes")
    p.add_argument("--show", type=int, default=50, help="problems listed (the count says how many more)")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be >= 1")
    if not args.dir.is_dir():
        p.error(f"DIR {args.dir}: not a folder")
    t0 = time.perf_counter()
    problems, summary = verify(args.dir, args.name, args.workers)
    if problems:
        print(f"verify_shards: {len(problems)} problem(s) in {args.dir / args.name}:", file=sys.stderr)
        for line in report(problems, args.show):
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"verify_shards: ok: {summary} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
