"""The machine's second round: write a label-fixes file from a run's label scores, then train
again with it.

    python tools/rank_labels.py --run runs/a --out runs/a/labels
    python tools/second_round.py runs/a/labels --out runs/a/second_round.csv
    python train/limit.py ... --label-fixes runs/a/second_round.csv --out runs/b

Rules and thresholds: tools/review/second_round.py (README, "The machine's second round").
Bad input prints one line on stderr and exits with code 2."""
import argparse
import json
import sys
from pathlib import Path

from pipeline import safe_io
from pipeline.csv_cells import write_csv
from pipeline.shards import DataError
from tools.review import second_round
from tools.review.page import read_scores


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("labels", help="rank_labels' --out folder (label_scores.parquet, summary.json) of the train split")
    p.add_argument("--out", required=True, help="the fixes CSV to write (review page format)")
    p.add_argument("--relabel-min-score", type=float, default=None,
                   help="relabel only at or above this score (default: 1.6 for L1 scores, 1.0 for L2)")
    p.add_argument("--no-drop", dest="drop", action="store_false", help="keep the ambiguous samples instead of dropping them")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    labels, out = Path(args.labels), Path(args.out)
    if out.exists() and not args.overwrite:
        raise DataError(f"--out {out} exists (pass --overwrite to replace it)")
    cols, summary = read_scores(labels)
    if summary.get("split", "train") != "train":
        raise DataError(f"{labels}: scores of the {summary.get('split')!r} split; a second round fixes train labels only")
    norm = second_round.norm_of(summary)
    min_score = args.relabel_min_score if args.relabel_min_score is not None else second_round.DEFAULT_MIN_SCORE[norm]
    d = second_round.decide(cols["label"], cols["classifier_pred"], cols["predictor_pred"], cols["score"],
                            min_score, args.drop)
    write_csv(out, second_round.COLUMNS, second_round.rows(cols, d))
    rep = {**second_round.report(cols, d), "min_score": min_score, "norm": norm}
    safe_io.write_json(out.with_suffix(".json"), rep)
    print(f"second_round: {json.dumps(rep)}; wrote {out}")
    return 0


def cli(argv=None) -> int:
    try:
        return main(argv)
    except DataError as e:
        print(f"second_round: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
