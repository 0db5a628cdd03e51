"""Scoring a training run: its config and checkpoint read back (they may come from a
stranger), the split read as the run read it, every sample scored, the ranking's outputs
(label_scores.parquet, summary.json, suspects.csv, suspects.png) written."""
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from pipeline import bucket_cards, loader as data, safe_io
from pipeline.batch import to_device
from pipeline.progress import bar as progress_bar
from pipeline.shards import DataError, Part, check_file_url
from tools.review.detection import detection_summary
from tools.review.noise_matrix import noise_report
from tools.review.scores import Collector, Scores, ranks, score_outputs, suggested, suspect_rows, write_scores
from tools.review.suspects import draw_suspects, grid_rows, write_suspects_csv
from train import checkpoint, config, runfolder, setup
from train.init_phase import chosen_loss, from_ce_phase
from train.objectives import REGISTRY, Score


def load_run(args):
    run = Path(args.run)
    if not (run / "config.json").is_file():
        raise config.ConfigError(f"--run {run}: no config.json (not a training run folder)")
    cfg = saved_config(run / "config.json", args.trust_urls)
    if args.data:                      # shards moved: the other splits come from the card
        cfg = replace(cfg, data=list(args.data), val_data=None, test_data=None)
    cfg = replace(cfg, pretrained="", init_from="")   # weights come from the checkpoint
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
    """(dataset, aug, loader, samples) of the split to score, read as the run read it."""
    ds = data.resolve(cfg.data, cfg.val_data, cfg.test_data, args.trust_urls)
    rd = data.run_data(ds, cfg, part=part, scoring=args.split, batch_size=args.batch_size or 0, workers=args.workers)
    return ds, rd.aug, rd.loaders[args.split], rd.count(args.split)


def load_model(cfg, ckpt: Path, n_classes: int, in_chans: int):
    model = setup.build_model(cfg, n_classes, in_chans)
    model.classifier.load_state_dict(checkpoint.load_weights(checkpoint.classifier_file(ckpt)))
    if model.predictor is not None:
        if not (ckpt / "predictor.safetensors").is_file():
            raise checkpoint.CheckpointError(f"checkpoint {ckpt}: a LIMIT run without predictor.safetensors")
        model.predictor.load_state_dict(checkpoint.load_weights(ckpt / "predictor.safetensors"))
    return model.eval()


def scoring(cfg, meta: dict) -> Score:
    """How to score a checkpoint: as its objective declares (train/objectives.py REGISTRY),
    except a checkpoint of LIMIT's CE phase (--init-epochs), scored as the CE model it is, and
    with --predictor-loss auto by the distance the run chose."""
    if from_ce_phase(meta):
        return Score()
    score = REGISTRY[cfg.method].score
    if score.norm == "predictor_loss" and cfg.predictor_loss == "auto":
        return Score(score.net, chosen_loss(meta) or "mae")
    return score


@torch.no_grad()
def score_split(model, ld, norm, device, cfg, total, show: bool, sink=None, score: Score | None = None) -> tuple[Scores, int]:
    """`sink` (tools.review.exports.ProbSink, for --cleanlab/--fiftyone) also gets the scoring
    network's logits of every batch; `score` (default: the objective's) says which network."""
    col, skipped, score = Collector(total or 0), 0, score or REGISTRY[cfg.method].score
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    bar = progress_bar(total=total, desc="scoring", unit="img", disable=not show)   # lines off a terminal
    for batch in ld(0):
        skipped += len(batch.skipped)
        bar.update(len(batch))
        if len(batch) == 0 or getattr(batch, "pad", False):
            continue
        b = to_device(batch, device, *norm, cfg.channels_last)
        out = model(b.images)
        col.add(index=batch.index, label=batch.labels, clean=batch.clean,
                **score_outputs(out, b.labels, score.net, score.norm_for(cfg)))
        if sink is not None:
            sink.add(batch.index, out.aux if score.net == "predictor" else out.logits)
    bar.close()
    return col.result(), skipped


def gather(acc, s: Scores, out: Path) -> Scores | None:
    """Several processes: each scored its own shards; the main one concatenates (via OUT)."""
    if acc.num_processes == 1:
        return s
    with safe_io.temp_path(out / f".scores-{acc.process_index}.npz") as tmp:
        np.savez(tmp, **vars(s))
    acc.wait_for_everyone()
    if not acc.is_main_process:
        return None
    paths = [out / f".scores-{r}.npz" for r in range(acc.num_processes)]
    parts = [dict(np.load(p)) for p in paths]
    for p in paths:
        p.unlink()
    return Scores(**{f.name: np.concatenate([p[f.name] for p in parts]) for f in fields(Scores)})


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
    summary["noise_matrix"] = noise_report(cols, len(ds.classes), args.split)   # tools/review/noise_matrix.py
    safe_io.write_json(out / "summary.json", summary)
    if args.top:
        write_suspects_csv(out / "suspects.csv", suspect_rows(s, rank, records, ds.classes, args.top))
    tiles = [(records[int(r)], int(s.label[r]), suggested(s, int(r))) for r in picks]
    draw_suspects(out / "suspects.png", tiles, ds.classes, bucket_cards.shard_folder(ds.card_path),
                  args.grid_per_class)
    print(f"rank_labels: {len(s)} samples, roc_auc {summary['roc_auc']}, wrote {out}")
    return summary
