"""Predict with a trained run, evaluate it, export it for plain timm.

    python tools/predict.py RUN --data shards/ --split test --out preds/      # with the report
    python tools/predict.py RUN --images photos/ a.jpg --out preds/           # no labels: no report
    python tools/predict.py RUN --export model-export/                        # timm export only

Writes OUT/predictions.parquet and OUT/predictions.csv (top-k classes and probabilities per
sample), OUT/summary.json and, where the samples carry labels, OUT/report.json,
OUT/confusion.csv, OUT/confusion.png and OUT/reliability.png. Several GPUs:
`accelerate launch tools/predict.py ...`. Bad input prints one line and exits with code 2.
The work is in train/predict/."""
import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.backbones import ModelError  # noqa: E402
from pipeline import remote  # noqa: E402
from pipeline.shards import DataError, TRUST_FLAG  # noqa: E402
from tools.review.ranking import load_run  # noqa: E402
from train import checkpoint, config  # noqa: E402
from train.predict.run import Options, export_only, predict  # noqa: E402

USER_ERRORS = (config.ConfigError, DataError, ModelError, checkpoint.CheckpointError)


def parse_args(argv):
    p = config.OneLineParser(description="Predict with a trained run; evaluate; export for timm.")
    p.add_argument("run", help="training run folder (config.json, checkpoints/)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint folder (default best)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", nargs="+", help="a dataset card's folder (with --split) or shard patterns")
    src.add_argument("--images", nargs="+", help="image files and folders (searched recursively)")
    p.add_argument("--split", default="test", help="split of a --data folder (default test)")
    p.add_argument("--card", default="", help="dataset card for --images/--export (default: the run's)")
    p.add_argument("--top-k", type=int, default=5, help="classes kept per sample (default 5)")
    p.add_argument("--batch-size", type=int, default=0, help="default: the run's")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: the run's)")
    p.add_argument("--log-interval", type=float, default=None,
                   help="seconds between progress lines when stderr is not a terminal (default 30)")
    p.add_argument("--out", help="output folder (needed with --data or --images)")
    p.add_argument("--export", default="", help="also write a timm export (model.safetensors, config.json) here")
    p.add_argument(TRUST_FLAG, dest="trust_urls", action="store_true",
                   help="let the run's config.json and the dataset card name pipe: or remote shard URLs")
    args = p.parse_args(argv)
    if not (args.data or args.images or args.export):
        p.error("give --data, --images or --export")
    if (args.data or args.images) and not args.out:
        p.error("--out is needed with --data or --images")
    if args.top_k < 1 or args.batch_size < 0 or (args.workers or 0) < 0 or (args.log_interval or 0) < 0:
        p.error("--top-k must be >= 1; --batch-size, --workers and --log-interval >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg, ckpt = load_run(argparse.Namespace(run=args.run, checkpoint=args.checkpoint, data=None,
                                            trust_urls=args.trust_urls))
    opts = Options(out=Path(args.out or "."), data=args.data, split=args.split, images=args.images,
                   card=args.card, top_k=args.top_k, batch_size=args.batch_size, workers=args.workers,
                   interval=args.log_interval, export=args.export, trust_urls=args.trust_urls)
    if not (args.data or args.images):
        print(f"predict: exported {export_only(cfg, ckpt, opts)}")
        return 0
    from accelerate import Accelerator
    summary = predict(cfg, ckpt, opts, Accelerator())
    if summary is not None:
        acc = f", accuracy {summary['accuracy']:.4f}" if summary.get("accuracy") is not None else ""
        print(f"predict: {summary['samples']} samples ({summary['skipped']} skipped){acc}, wrote {args.out}")
    return 0


def cli(argv=None) -> int:
    try:
        return main(argv)
    except (*USER_ERRORS, *remote.storage_errors()) as e:
        print(f"predict: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("predict: interrupted; --out may hold partial files (run it again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
