"""A static review page for a run's most suspicious training labels.

    python tools/review_labels.py --labels RUN/labels --out RUN/review [--top 1000]
        [--label-studio RUN/review/label_studio_tasks.json]

RUN/labels is tools/rank_labels.py's output (label_scores.parquet, summary.json). Writes:
  OUT/index.html           the page: opens from file:// with no server and no network (script
                           and style inline); decisions persist in the browser's localStorage
                           (keyed by the run) and export as CSV key,index,given,decision,new_label,
                           which pipeline/fixes.py reads (train/limit.py --label-fixes)
  OUT/thumbs/INDEX.png|jpg one thumbnail per suspect, cut from the shards here (the browser never
                           opens a shard)
  OUT/noise_matrix.png     the estimated noise transition matrix (and the true one when the
  OUT/noise.json           clean labels are known), with the per-class noise rate
  --label-studio FILE      Label Studio import tasks (image + the predicted label as a `choices`
                           pre-annotation) and FILE's sibling label_studio_config.xml

The class names come from the dataset card: the run's config.json (RUN = the parent of
--labels, or --run) names its shards, pipeline.loader.resolve finds the card; --card overrides.
A missing file prints one line and exits with code 2."""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipeline import bucket_cards, remote, safe_io, shards  # noqa: E402
from pipeline.shards import DataError, TRUST_FLAG  # noqa: E402
from tools.review.label_studio import write_label_studio  # noqa: E402
from tools.review.noise_matrix import noise_report  # noqa: E402
from tools.review.page import (check_labels, find_card, page_rows, plot_noise, read_scores, read_sources,  # noqa: E402
                               run_id, suspects, write_page, write_thumbs)
from train import config  # noqa: E402


def parse_args(argv):
    p = config.OneLineParser(description="Write a static review page for a run's most suspicious labels.")
    p.add_argument("--labels", required=True, help="rank_labels' output folder (label_scores.parquet)")
    p.add_argument("--out", required=True, help="output folder for index.html and thumbs/")
    p.add_argument("--top", type=int, default=1000, help="how many of the most suspicious samples (default 1000)")
    p.add_argument("--run", help="the training run (default: the parent of --labels), to find the dataset card")
    p.add_argument("--card", help="the dataset card JSON (default: found from the run's config.json)")
    p.add_argument("--thumb-size", type=int, default=96, help="thumbnail size in pixels (default 96)")
    p.add_argument("--label-studio", help="also write Label Studio import tasks to this JSON file")
    p.add_argument("--label-studio-prefix", default="/data/local-files/?d=",
                   help="prefix of data.image before the thumbnail's path relative to --out "
                        "(default: Label Studio's local-files URL; "
                        "set LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT to --out)")
    p.add_argument(TRUST_FLAG, dest="trust_urls", action="store_true",
                   help="let the run's config.json and the card name pipe: or remote shard URLs")
    args = p.parse_args(argv)
    if args.top < 1 or not 8 <= args.thumb_size <= 1024:
        p.error("--top must be >= 1 and --thumb-size between 8 and 1024")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    labels, out = Path(args.labels), safe_io.out_dir(args.out)     # a link there is refused
    cols, summary = read_scores(labels)
    card_path = find_card(args)
    card = shards.read_card(card_path)
    classes = card["classes"]
    check_labels(cols, len(classes), card_path)
    top = suspects(cols, args.top)
    wanted = {}
    for shard, key, index in zip(top["shard"], top["key"], top["index"]):
        wanted.setdefault(shard, {})[key] = int(index)
    thumbs = write_thumbs(bucket_cards.shard_folder(card_path), wanted, out / "thumbs", args.thumb_size)
    sources = read_sources(card_path.with_suffix(".parquet"), top["index"])
    rows = page_rows(top, sources, thumbs)
    noise = noise_report(cols, len(classes), summary.get("split", "train"))
    safe_io.write_json(out / "noise.json", noise)
    plot_noise(out / "noise_matrix.png", noise, classes)
    payload = {"run_id": run_id(labels), "run": str(labels.resolve().parent), "classes": classes,
               "summary": summary, "noise": noise, "rows": rows, "n_scored": int(len(cols["index"]))}
    page = write_page(out, payload)
    if args.label_studio:
        write_label_studio(Path(args.label_studio), rows, classes, args.label_studio_prefix,
                           summary.get("method", "rank_labels"))
    print(f"review_labels: {len(rows['index'])} suspects, {len(thumbs)} thumbnails; open {page.resolve().as_uri()}")
    return 0


def cli(argv=None) -> int:
    try:
        return main(argv)
    except (DataError, config.ConfigError, *remote.storage_errors()) as e:
        print(f"review_labels: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
