"""Rank a run's training labels by how suspicious they are (docs/architecture.md section 2).

    python tools/rank_labels.py --run runs/limit --out runs/limit/labels [--top 500]

A sample's score is ||onehot(y) - softmax(net(x))|| with the network and norm the run's
objective declares (train/objectives.py REGISTRY, `score`): LIMIT runs by the predictor r with
the run's norm (L2 for mse/LIMIT_G, L1 for mae/LIMIT_L); CE and every other objective
(softreg included: its auxiliary network is not a label predictor) by the L2 distance on the
classifier's own softmax; a LIMIT checkpoint saved during its CE phase (--init-epochs, when
the best noisy-validation epoch lies there) by its classifier too, its predictor being still
untrained (train/init_phase.py). Large = suspicious. The split is read with eval transforms and the run's noise
table and subset, so the given labels are exactly those the run trained on.

Writes OUT/label_scores.parquet, OUT/summary.json, OUT/suspects.png and, with --top K,
OUT/suspects.csv. A missing run or checkpoint prints one line and exits with code 2."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from models.backbones import ModelError  # noqa: E402
from pipeline import remote, safe_io  # noqa: E402
from pipeline.shards import DataError, Part, TRUST_FLAG  # noqa: E402
from tools.review import exports  # noqa: E402
from tools.review.ranking import build_loader, gather, load_model, load_run, report, score_split, scoring  # noqa: E402
from train import checkpoint, config  # noqa: E402

USER_ERRORS = (config.ConfigError, DataError, ModelError, checkpoint.CheckpointError)


def parse_args(argv):
    p = config.OneLineParser(description="Rank a run's labels by how suspicious they are.")
    p.add_argument("--run", required=True, help="training run folder (config.json, checkpoints/)")
    p.add_argument("--checkpoint", default="best", help="best, last, or a checkpoint folder")
    p.add_argument("--split", default="train", choices=["train", "val"])
    p.add_argument("--data", nargs="+", help="train shards, when they moved since the run")
    p.add_argument("--top", type=int, default=0, help="also write suspects.csv with the K most suspicious")
    p.add_argument("--grid-per-class", type=int, default=8, help="samples per class row in suspects.png")
    p.add_argument("--batch-size", type=int, default=0, help="default: the run's")
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: the run's)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--cleanlab", action="store_true",
                   help="also write OUT/cleanlab/pred_probs.npy, labels.npy, index.npy (cleanlab's inputs)")
    p.add_argument("--fiftyone", type=int, default=0, metavar="N",
                   help="also write the N most suspicious samples as a FiftyOne image classification dataset")
    p.add_argument(TRUST_FLAG, dest="trust_urls", action="store_true",
                   help="let the run's config.json and the dataset card name pipe: or remote shard URLs "
                        "(pipe: runs a shell command: only for runs you made)")
    args = p.parse_args(argv)
    for flag, value in (("--top", args.top), ("--grid-per-class", args.grid_per_class),
                        ("--batch-size", args.batch_size), ("--workers", args.workers or 0)):
        if value < 0:
            p.error(f"{flag} must be >= 0, got {value}")
    return args


def main(argv=None) -> int:
    from accelerate import Accelerator
    args = parse_args(argv)
    cfg, ckpt = load_run(args)
    out = safe_io.out_dir(args.out)             # a link there, or a file, is refused
    acc = Accelerator()
    if args.fiftyone < 0:
        raise config.ConfigError(f"--fiftyone must be >= 0, got {args.fiftyone}")
    if (args.cleanlab or args.fiftyone) and acc.num_processes > 1:
        raise DataError("--cleanlab and --fiftyone run in one process (the probabilities are not gathered)")
    sink = exports.ProbSink() if args.cleanlab or args.fiftyone else None
    ds, aug, ld, total = build_loader(cfg, args, Part(acc.process_index, acc.num_processes))
    model = load_model(cfg, ckpt, len(ds.classes), aug.channels).to(acc.device)
    norm = (tuple(ds.card["normalize"]["mean"]), tuple(ds.card["normalize"]["std"]))
    mine = total if acc.num_processes == 1 else None      # this rank's share is not known
    score = scoring(cfg, checkpoint.read_meta(ckpt))
    s, skipped = score_split(model, ld, norm, acc.device, cfg, mine, acc.is_main_process, sink, score)
    s = gather(acc, s, out)
    if s is None:
        return 0
    said = exports.export(s, sink, ds, out, args.cleanlab, args.fiftyone) if sink is not None else {}
    report(s, ds, out, args, {**said, "method": score.describe(cfg), "checkpoint": str(ckpt), "split": args.split,
                              "n_skipped": skipped, "device": str(acc.device)})
    return 0


def cli(argv=None) -> int:
    try:
        return main(argv)
    except (*USER_ERRORS, *remote.storage_errors()) as e:
        print(f"rank_labels: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rank_labels: interrupted; --out may hold partial files (run it again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
