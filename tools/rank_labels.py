"""Rank a run's training labels by how suspicious they are (docs/architecture.md section 2).

    python tools/rank_labels.py --run runs/limit --out runs/limit/labels [--top 500]

LIMIT runs score a sample by ||onehot(y) - softmax(r(x))|| with the run's norm (L2 for
mse/LIMIT_G, L1 for mae/LIMIT_L); CE and baseline runs by the L2 distance on the classifier's
own softmax. Large = suspicious. The split is read with eval transforms and the run's noise
table and subset, so the given labels are exactly those the run trained on.

Writes OUT/label_scores.parquet, OUT/summary.json, OUT/suspects.png and, with --top K,
OUT/suspects.csv. A missing run or checkpoint prints one line and exits with code 2."""
import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from models.backbones import ModelError  # noqa: E402
from models.limit import label_scores  # noqa: E402
from pipeline import loader as data  # noqa: E402
from pipeline.batch import to_device  # noqa: E402
from pipeline.cpu import ReadSpec  # noqa: E402
from pipeline.shards import DataError, Part, TRUST_FLAG, check_file_url  # noqa: E402
from train import checkpoint, config, runfolder, setup  # noqa: E402
from train.noise_matrix import noise_report  # noqa: E402
from train.objectives import REGISTRY  # noqa: E402
from train.report import detection_summary, draw_suspects, grid_rows, write_suspects_csv  # noqa: E402

USER_ERRORS = (config.ConfigError, DataError, ModelError, checkpoint.CheckpointError)
SCHEMA = pa.schema([("key", pa.string()), ("index", pa.int64()), ("shard", pa.string()),
                    ("label", pa.int64()), ("clean_label", pa.int64()), ("score", pa.float32()),
                    ("rank", pa.int64()), ("classifier_pred", pa.int64()), ("predictor_pred", pa.int64())])
DTYPES = {"index": np.int64, "label": np.int32, "clean": np.int32, "score": np.float32,
          "classifier_pred": np.int32, "predictor_pred": np.int32}


@dataclass
class Scores:
    """Numeric columns only (DTYPES: 28 bytes a row); keys, shards and paths stay in the
    manifest and are joined chunk by chunk when writing. label = given (after the run's
    noise); clean and predictor_pred are -1 where unknown / without a predictor."""
    index: np.ndarray
    label: np.ndarray
    clean: np.ndarray
    score: np.ndarray
    classifier_pred: np.ndarray
    predictor_pred: np.ndarray

    def __len__(self):
        return len(self.index)


class Collector:
    """Batches -> one Scores, in columns that grow by doubling (no per-batch chunk lists, no
    final concatenation: peak = the columns themselves, or 1.5x during a growth)."""

    def __init__(self, capacity: int = 0):
        self.n = 0
        self.cols = {k: np.empty(max(capacity, 1024), dt) for k, dt in DTYPES.items()}

    def add(self, **cols):
        m = len(cols["index"])
        if self.n + m > len(self.cols["index"]):
            size = max(2 * len(self.cols["index"]), self.n + m)
            self.cols = {k: np.resize(a, size) for k, a in self.cols.items()}
        for k, v in cols.items():
            self.cols[k][self.n:self.n + m] = v.cpu().numpy() if torch.is_tensor(v) else v
        self.n += m

    def result(self) -> Scores:
        return Scores(**{k: a[:self.n] for k, a in self.cols.items()})


def score_outputs(logits, aux, given, norm: str) -> dict:
    """The score of each sample and the two predictions, from one forward's outputs."""
    if aux is None:
        return {"score": label_scores(logits, given, "mse"), "classifier_pred": logits.argmax(1),
                "predictor_pred": torch.full_like(given, -1)}
    return {"score": label_scores(aux, given, norm), "classifier_pred": logits.argmax(1),
            "predictor_pred": aux.argmax(1)}


def ranks(s: Scores) -> np.ndarray:
    """1 = most suspicious; ties broken by the lower index, so the order is reproducible."""
    order = np.lexsort((s.index, -s.score))
    r = np.empty(len(s), dtype=np.int32 if len(s) < 2**31 else np.int64)
    r[order] = np.arange(1, len(s) + 1, dtype=r.dtype)
    return r


def write_scores(s: Scores, rank: np.ndarray, manifest: Path, out: Path, top_k: int = 0,
                 extra_rows=(), group_rows: int = 65536) -> dict:
    """label_scores.parquet in manifest order, key and shard joined chunk by chunk. Memory:
    Scores (28 bytes a row), rank (4), a row-of-index lookup (4 per dataset index) and one
    manifest chunk; never a Python object per row of the split (the global rank needs only
    the scores). Returns {row: manifest record} for the top_k rows and `extra_rows`."""
    row_of = np.full(int(s.index.max()) + 1 if len(s) else 0, -1, dtype=np.int32)
    row_of[s.index] = np.arange(len(s), dtype=np.int32)
    wanted = rank <= top_k
    wanted[np.asarray(extra_rows, dtype=np.int64)] = True
    records, written, pending = {}, 0, []
    cols = [c for c in ("key", "shard", "index", "source") if c in pq.read_schema(manifest).names]
    with pq.ParquetWriter(out, SCHEMA, use_dictionary=["shard"]) as writer:
        for chunk, sel, r in _joined(manifest, cols, row_of):
            pending.append(_table(chunk, sel, r, s, rank))
            written += len(sel)
            if sum(map(len, pending)) >= group_rows:     # row groups of ~64k rows
                writer.write_table(pa.concat_tables(pending))
                pending = []
            for i in np.flatnonzero(wanted[r]):
                records[int(r[i])] = {c: chunk.column(c)[int(sel[i])].as_py() for c in cols}
        if pending:
            writer.write_table(pa.concat_tables(pending))
    if written != len(s):
        raise DataError(f"manifest {manifest} lacks {len(s) - written} of the {len(s)} scored samples")
    return records


def _joined(manifest: Path, cols: list, row_of: np.ndarray, rows: int = 8192):
    """(manifest chunk, positions in it, scored rows), decoded page by page: make_shards
    writes one row group per million samples, which read whole costs ~100 bytes a row."""
    f = pq.ParquetFile(manifest, buffer_size=1 << 20, pre_buffer=False)
    for chunk in f.iter_batches(batch_size=rows, columns=cols, use_threads=False):
        idx = chunk.column("index").to_numpy()
        found = np.full(len(idx), -1, dtype=np.int64)
        inside = idx < len(row_of)
        found[inside] = row_of[idx[inside]]
        sel = np.flatnonzero(found >= 0)
        if len(sel):
            yield chunk, sel, found[sel]


def _table(chunk, sel, r, s: Scores, rank) -> pa.Table:
    pp = s.predictor_pred[r]
    arr = lambda v: pa.array(v.astype(np.int64))  # noqa: E731
    return pa.table({"key": chunk.column("key").take(sel), "index": arr(s.index[r]),
                     "shard": chunk.column("shard").take(sel), "label": arr(s.label[r]),
                     "clean_label": arr(s.clean[r]), "score": pa.array(s.score[r]),
                     "rank": arr(rank[r]), "classifier_pred": arr(s.classifier_pred[r]),
                     "predictor_pred": pa.array(pp.astype(np.int64), mask=pp < 0)}, schema=SCHEMA)


def suspect_rows(s: Scores, rank, records: dict, classes, top_k: int) -> list[dict]:
    """suspects.csv's rows, most suspicious first."""
    rows = sorted((int(rank[r]), r) for r in records if rank[r] <= top_k)
    return [{**records[r], "rank": k, "index": int(s.index[r]), "given": classes[s.label[r]],
             "predicted": classes[_suggested(s, r)], "score": f"{s.score[r]:.6g}"} for k, r in rows]


def _suggested(s: Scores, r) -> int:
    """The label the scorer expects: the predictor's argmax for LIMIT, else the classifier's."""
    return int(s.predictor_pred[r]) if s.predictor_pred[r] >= 0 else int(s.classifier_pred[r])


def load_run(args):
    run = Path(args.run)
    if not (run / "config.json").is_file():
        raise config.ConfigError(f"--run {run}: no config.json (not a training run folder)")
    cfg = saved_config(run / "config.json", args.trust_urls)
    if args.data:                      # shards moved: the other splits come from the card
        cfg.data, cfg.val_data, cfg.test_data = list(args.data), None, None
    cfg.pretrained, cfg.init_from = "", ""   # weights come from the checkpoint
    if args.checkpoint in ("best", "last"):
        ckpt = run / "checkpoints" / args.checkpoint
        if not (ckpt / "model.safetensors").is_file():
            raise checkpoint.CheckpointError(f"no checkpoint at {ckpt} (expected model.safetensors)")
    else:
        ckpt = checkpoint.locate(args.checkpoint)
    return cfg, ckpt


def saved_config(path: Path, trust: bool) -> config.Config:
    """A run's config.json, which may come from a stranger: each known field must have its
    type (keys of other versions are dropped), the whole must pass the trainer's checks, and
    its shard URLs must be plain paths unless --trust-urls (pipeline.shards.check_file_url)."""
    saved = runfolder.read_json(path, "--run")
    kw = {}
    for f in fields(config.Config):
        if f.name not in saved:
            continue
        v, want = saved[f.name], f.type if f.type in (int, float, str, bool) else list
        ok = (v is None and want is list) or (isinstance(v, want) and not (want is int and isinstance(v, bool))) \
            or (want is float and isinstance(v, int) and not isinstance(v, bool))
        if not ok or (want is list and v is not None and not all(isinstance(x, str) for x in v)):
            raise config.ConfigError(f"--run: {path}: field {f.name!r} has the wrong type ({type(v).__name__})")
        kw[f.name] = v
    try:
        cfg = config.validate(config.Config(**kw))
    except config.ConfigError as e:
        raise config.ConfigError(f"--run: {path}: {e}") from None
    for name in ("data", "val_data", "test_data"):
        for i, url in enumerate(getattr(cfg, name) or []):
            check_file_url(url, f"--run: {path}, field {name}[{i}]", trust)
    return cfg


def build_loader(cfg, args, part: Part):
    ds = data.resolve(cfg.data, cfg.val_data, cfg.test_data, args.trust_urls)
    if args.split not in ds.urls:
        raise DataError(f"the dataset has no {args.split!r} split")
    aug = data.spec_from_card(ds.card, cfg.image_size)
    noise, fixes = data.given_labels(ds, cfg.noise, cfg.noise_pairs, cfg.noise_seed, cfg.label_fixes)
    # the run's subset less its drops (not its balanced draws: every sample it could train on is scored)
    select = (data.selection(ds, cfg.max_train_samples, 0, cfg.seed, noise, fixes.drop if fixes else ())
              if args.split == "train" else None)
    spec = ReadSpec(aug, train=False, batch_size=args.batch_size or cfg.batch_size, seed=cfg.seed)
    ld = data.Loader(ds.urls[args.split], spec, len(ds.classes),
                     workers=cfg.workers if args.workers is None else args.workers,
                     noise=noise, select=select, part=part)
    count = ds.card["splits"].get(args.split, {}).get("count")
    total = select.count(0, count) if select is not None else count
    return ds, aug, ld, total


def load_model(cfg, ckpt: Path, n_classes: int, in_chans: int):
    model = setup.build_model(cfg, n_classes, in_chans)
    model.classifier.load_state_dict(checkpoint.load_weights(checkpoint.classifier_file(ckpt)))
    if model.predictor is not None:
        if not (ckpt / "predictor.safetensors").is_file():
            raise checkpoint.CheckpointError(f"checkpoint {ckpt}: a LIMIT run without predictor.safetensors")
        model.predictor.load_state_dict(checkpoint.load_weights(ckpt / "predictor.safetensors"))
    return model.eval()


@torch.no_grad()
def score_split(model, ld, norm, device, cfg, total, show: bool) -> tuple[Scores, int]:
    col, skipped = Collector(total or 0), 0
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    bar = tqdm(total=total, desc="scoring", unit="img", disable=not show)
    for batch in ld(0):
        skipped += len(batch.skipped)
        bar.update(len(batch))
        if len(batch) == 0 or getattr(batch, "pad", False):
            continue
        b = to_device(batch, device, *norm, cfg.channels_last)
        out = model(b.images)
        col.add(index=batch.index, label=batch.labels, clean=batch.clean,
                **score_outputs(out.logits, out.aux, b.labels, cfg.predictor_loss))
    bar.close()
    return col.result(), skipped


def gather(acc, s: Scores, out: Path) -> Scores | None:
    """Several processes: each scored its own shards; the main one concatenates (via OUT)."""
    if acc.num_processes == 1:
        return s
    np.savez(out / f".scores-{acc.process_index}.npz", **vars(s))
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    paths = [out / f".scores-{r}.npz" for r in range(acc.num_processes)]
    parts = [dict(np.load(p)) for p in paths]
    for p in paths:
        p.unlink()
    return Scores(**{f.name: np.concatenate([p[f.name] for p in parts]) for f in fields(Scores)})


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
    p.add_argument(TRUST_FLAG, dest="trust_urls", action="store_true",
                   help="let the run's config.json and the dataset card name pipe: or remote shard URLs "
                        "(pipe: runs a shell command: only for runs you made)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    from accelerate import Accelerator
    args = parse_args(argv)
    cfg, ckpt = load_run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    acc = Accelerator()
    ds, aug, ld, total = build_loader(cfg, args, Part(acc.process_index, acc.num_processes))
    model = load_model(cfg, ckpt, len(ds.classes), aug.channels).to(acc.device)
    norm = (tuple(ds.card["normalize"]["mean"]), tuple(ds.card["normalize"]["std"]))
    mine = total if acc.num_processes == 1 else None      # this rank's share is not known
    s, skipped = score_split(model, ld, norm, acc.device, cfg, mine, acc.is_main_process)
    s = gather(acc, s, out)
    if s is None:
        return 0
    method = (f"predictor {cfg.predictor_loss}" if REGISTRY[cfg.method].scores_with_predictor
              else "classifier mse")
    report(s, ds, out, args, {"method": method, "checkpoint": str(ckpt), "split": args.split,
                              "n_skipped": skipped, "device": str(acc.device)})
    return 0


def report(s: Scores, ds, out: Path, args, info: dict) -> dict:
    manifest = ds.card_path.with_suffix(".parquet")
    if not manifest.is_file():
        raise DataError(f"manifest not found: {manifest} (written beside the card by make_shards)")
    rank = ranks(s)
    picks = grid_rows(s.label, rank, args.grid_per_class, len(ds.classes))
    records = write_scores(s, rank, manifest, out / "label_scores.parquet", args.top, picks)
    summary = {**detection_summary(s.score, s.label, s.clean), **info}
    cols = {"label": s.label, "predictor_pred": s.predictor_pred, "classifier_pred": s.classifier_pred,
            "clean_label": s.clean}
    summary["noise_matrix"] = noise_report(cols, len(ds.classes), args.split)   # train/noise_matrix.py
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if args.top:
        write_suspects_csv(out / "suspects.csv", suspect_rows(s, rank, records, ds.classes, args.top))
    tiles = [(records[int(r)], int(s.label[r]), _suggested(s, int(r))) for r in picks]
    draw_suspects(out / "suspects.png", tiles, ds.classes, ds.card_path.parent, args.grid_per_class)
    print(f"rank_labels: {len(s)} samples, roc_auc {summary['roc_auc']}, wrote {out}")
    return summary


def cli(argv=None) -> int:
    try:
        return main(argv)
    except USER_ERRORS as e:
        print(f"rank_labels: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rank_labels: interrupted; --out may hold partial files (run it again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())
