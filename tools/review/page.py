"""The review page (tools/review_labels.py): rank_labels' output and the dataset card read
back, thumbnails cut from the shards, the noise matrix drawn, and one static index.html with
its assets, data and script inline."""
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import loader as data, manifest as manifests, safe_io
from pipeline.records import find_images
from pipeline.shards import DataError
from tools.review.ranking import saved_config
from train.report import pyplot

ASSETS = Path(__file__).with_name("assets")
SCORE_COLUMNS = ["key", "index", "shard", "label", "clean_label", "score", "rank", "classifier_pred",
                 "predictor_pred"]
# label_scores.parquet may come from a stranger: each column's Arrow type is checked before use
COLUMN_KIND = {"key": pa.types.is_string, "shard": pa.types.is_string, "score": pa.types.is_floating,
               **{c: pa.types.is_integer for c in ("index", "label", "clean_label", "rank", "classifier_pred",
                                                   "predictor_pred")}}
# summary.json's fields the page and this tool read, with their types; the rest is not passed on
SUMMARY_NUMBERS = ("n", "n_known", "n_wrong", "frac_wrong", "roc_auc", "average_precision", "k",
                   "precision_at_k", "threshold", "n_skipped")
SUMMARY_TEXT = ("method", "checkpoint", "split", "device")
MAX_SCORES = 64 << 30        # label_scores.parquet: ~30 bytes a sample
MAX_SUMMARY = 64 << 20


# ---- inputs ----

def find_card(args) -> Path:
    """The dataset card: --card, else the one the run's config.json leads to (rank_labels'
    own checks on that file apply: it may come from a stranger)."""
    if args.card:
        return Path(args.card)
    run = Path(args.run) if args.run else Path(args.labels).resolve().parent
    if not (run / "config.json").is_file():
        raise DataError(f"no config.json in {run} to find the dataset card: give --run or --card")
    cfg = saved_config(run / "config.json", args.trust_urls)
    try:
        return data.resolve(cfg.data, cfg.val_data, cfg.test_data, args.trust_urls).card_path
    except DataError as e:             # the run's shards moved: say which flag helps
        raise DataError(f"the shards of {run / 'config.json'}: {e} (give --card when they moved)") from None


def read_scores(labels: Path) -> tuple[dict, dict]:
    """(label_scores.parquet as numpy columns, summary.json)."""
    path = labels / "label_scores.parquet"
    if not path.is_file():
        raise DataError(f"{path} not found (run tools/rank_labels.py --out {labels} first)")
    safe_io.check_regular(path, MAX_SCORES, "label scores")
    try:
        table = pq.read_table(path, columns=SCORE_COLUMNS)
        summary = (json.loads(safe_io.read_capped(labels / "summary.json", MAX_SUMMARY, "summary"))
                   if (labels / "summary.json").exists() else {})
    except (OSError, ValueError, KeyError, RecursionError) as e:
        raise DataError(f"{labels}: cannot read rank_labels' output ({type(e).__name__})") from None
    for c, kind in COLUMN_KIND.items():
        if not kind(table.schema.field(c).type):
            raise DataError(f"{path}: column {c!r} has the wrong type ({table.schema.field(c).type})")
        if c != "predictor_pred" and table.column(c).null_count:      # a CE run's predictor_pred is null
            raise DataError(f"{path}: column {c!r} has {table.column(c).null_count} empty values")
    summary = check_summary(summary, labels / "summary.json")
    # key and shard stay Arrow arrays (no Python string per scored row: only the top K are
    # taken out); the numeric columns become numpy, a CE run's null predictor_pred -1
    cols = {c: table.column(c).combine_chunks() for c in SCORE_COLUMNS}
    cols = {c: (v if c in ("key", "shard") else v.fill_null(-1).to_numpy() if c == "predictor_pred"
                else v.to_numpy()) for c, v in cols.items()}
    if not np.isfinite(cols["score"]).all():               # NaN would sort anywhere and pass no threshold
        raise DataError(f"{path}: column 'score' holds NaN or infinity")
    return cols, summary


def check_summary(summary, path: Path) -> dict:
    """The fields of summary.json the page shows, each of its type (a NaN or a text roc_auc
    would stop the page's script half-built); one line naming the field otherwise."""
    if not isinstance(summary, dict):
        raise DataError(f"{path}: not a JSON object")
    out = {}
    for k in SUMMARY_NUMBERS:
        v = summary.get(k)
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)):
            raise DataError(f"{path}: {k!r} is not a finite number")
        out[k] = v
    for k in SUMMARY_TEXT:
        if k in summary and not isinstance(summary[k], str):
            raise DataError(f"{path}: {k!r} is not text")
        if k in summary:
            out[k] = summary[k]
    if out.get("split", "train") not in ("train", "val"):
        raise DataError(f"{path}: 'split' is not train or val")
    return out


def check_labels(cols: dict, n: int, card_path: Path) -> None:
    """Every label a class of the card (the page indexes class names with them)."""
    for c in ("label", "classifier_pred", "predictor_pred"):
        v = cols[c]
        if len(v) and (v.max() >= n or v.min() < -1 or (c != "predictor_pred" and v.min() < 0)):
            raise DataError(f"label_scores.parquet: {c} holds {int(v.max())} or {int(v.min())}, "
                            f"outside the {n} classes of {card_path} (scores from another dataset?)")


def suspects(cols: dict, k: int) -> dict:
    """The k best-ranked samples' columns, in rank order (key and shard as Python lists)."""
    rank = cols["rank"]
    pick = np.flatnonzero(rank <= k)
    pick = pick[np.argsort(rank[pick], kind="stable")][:k]     # ranks all 1 must not fill the page
    return {c: (v.take(pick).to_pylist() if c in ("key", "shard") else v[pick]) for c, v in cols.items()}


def read_sources(manifest: Path, indices: np.ndarray) -> dict[int, str]:
    """{index: source path} from the manifest, batch by batch (it may hold millions of rows)."""
    if not manifest.is_file() or "source" not in manifests.column_names(manifest):
        return {}
    wanted, out = set(int(i) for i in indices), {}
    for batch in manifests.iter_batches(manifest, ["index", "source"]):
        idx = batch.column("index").to_numpy()
        hit = np.flatnonzero(np.isin(idx, indices))
        src = batch.column("source")
        for i in hit:
            if int(idx[i]) in wanted:
                out[int(idx[i])] = src[int(i)].as_py() or ""
    return out


# ---- thumbnails ----

def write_thumbs(shard_dir: Path | str, wanted: dict, out: Path, size: int) -> dict[int, str]:
    """{index: thumbnail path relative to the page} for wanted {shard: {key: index}}, reading
    each shard once (pipeline.records.find_images; `shard_dir` a folder or a bucket folder's URL)."""
    safe_io.out_dir(out, "thumbs folder")          # a link there is refused
    return {wanted[shard][key]: _thumb(body, out, wanted[shard][key], size)
            for shard, key, body in find_images(shard_dir, wanted)}


def _thumb(body: bytes, out: Path, index: int, size: int) -> str:
    """One thumbnail file: PNG for grey images (small, exact), JPEG for colour."""
    from PIL import Image
    try:
        img = Image.open(io.BytesIO(body))
        img.draft("RGB", (size, size))            # JPEG: decode at reduced scale
        img = img.convert("L" if img.mode in ("1", "L", "LA", "I;16", "I") else "RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""
    img.thumbnail((size, size), Image.Resampling.BICUBIC)   # never enlarges: the page scales
    # small images up itself (image-rendering: pixelated), so a 28x28 digit stays ~1 KB
    name = f"{index}.png" if img.mode == "L" else f"{index}.jpg"
    buf = io.BytesIO()
    img.save(buf, **({"format": "PNG"} if img.mode == "L" else {"format": "JPEG", "quality": 85}))
    safe_io.write_bytes(out / name, buf.getvalue(), durable=False)   # thumbnails are redone, not synced
    return f"{out.name}/{name}"


# ---- where the noise is ----

def plot_noise(path: Path, report: dict, classes: list[str]) -> None:
    plt = pyplot()
    mats = [("estimated (predictor vs given)", report["estimated"], report["noise_rate"])]
    if report["true"] is not None:
        mats.append((f"true (clean vs given); MAE {report['mae']:.4f}", report["true"], report["true_noise_rate"]))
    n = len(classes)
    fig, axes = plt.subplots(1, len(mats), figsize=(min(0.5 * n, 9) * len(mats) + 2, min(0.5 * n, 9) + 1.5),
                             squeeze=False)
    for ax, (title, m, rate) in zip(axes[0], mats):
        a = np.array([[np.nan if v is None else v for v in row] for row in m])
        ax.imshow(a, vmin=0, vmax=1, cmap="viridis")
        names = [f"{c} ({'-' if r is None else f'{r:.2f}'})" for c, r in zip(classes, rate)] if n <= 30 else []
        ax.set(title=title, xlabel="given label", ylabel="clean label (noise rate)")
        if names:
            ax.set_xticks(range(n), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(n), names, fontsize=7)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    if not np.isnan(a[i, j]):
                        ax.text(j, i, f"{a[i, j]:.2f}", ha="center", va="center", fontsize=6,
                                color="black" if a[i, j] > 0.5 else "white")
    fig.tight_layout()
    safe_io.savefig(fig, path, dpi=100)
    plt.close(fig)


# ---- the page ----

def page_rows(top: dict, sources: dict, thumbs: dict) -> dict:
    """The suspects as columns (compact JSON: one array per field)."""
    idx = top["index"]
    return {"index": idx.tolist(), "key": top["key"], "shard": top["shard"],
            "source": [sources.get(int(i), "") for i in idx], "given": top["label"].tolist(),
            "pp": top["predictor_pred"].tolist(), "cp": top["classifier_pred"].tolist(),
            "score": [round(float(v), 5) if np.isfinite(v) else None for v in top["score"]],
            "rank": top["rank"].tolist(),
            "thumb": [thumbs.get(int(i), "") for i in idx]}


def run_id(labels: Path) -> str:
    """localStorage key of the decisions: the run folder and the scores' digest, so two runs
    (or a re-ranking) never share decisions."""
    digest = hashlib.sha256((labels / "label_scores.parquet").read_bytes()).hexdigest()[:16]
    return f"{labels.resolve().parent.name}/{labels.name}@{digest}"


def embed_json(obj) -> str:
    """JSON safe inside <script>: '<' escaped, so no value (a key, a source path) can close
    the element or open a comment."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def write_page(out: Path, payload: dict) -> Path:
    """index.html with the assets inlined (a page from file:// may not fetch JSON)."""
    html = (ASSETS / "review.html").read_text()
    html = html.replace("/*STYLE*/", (ASSETS / "review.css").read_text())
    html = html.replace("/*SCRIPT*/", (ASSETS / "review.js").read_text())
    html = html.replace("/*DATA*/", embed_json(payload))
    return safe_io.write_text(safe_io.out_dir(out) / "index.html", html)
