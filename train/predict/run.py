"""tools/predict.py's work: a run's classifier over shards or image files, on the devices
Accelerate gives (one process, or several under `accelerate launch`: shards are split by
process as the loaders split them, image files every world-th; the main process gathers
and writes), then the outputs (train.predict.outputs) and the optional timm export.

The run's config and checkpoint arrive already read and checked (the entry point reads them
as rank_labels does); this module never parses a run folder itself."""
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from accelerate.utils import gather_object

from models.backbones import create_backbone, load_classifier_weights
from pipeline import loader as data
from pipeline import progress, safe_io
from pipeline.cpu import ReadSpec
from pipeline.shards import DataError, Part, names_card, read_card, shard_counts
from train import checkpoint
from train.predict import evaluation, export, infer, outputs


@dataclass(frozen=True)
class Options:
    """The flags of tools/predict.py that this module reads."""
    out: Path
    data: list | None = None          # shards: a card's folder (with `split`) or shard patterns
    split: str = "test"
    images: list | None = None        # image files and folders
    card: str = ""                    # the dataset card for --images (default: the run's)
    top_k: int = 5
    batch_size: int = 0               # 0: the run's
    workers: int | None = None        # None: the run's
    interval: float | None = None     # seconds between progress lines off a terminal
    export: str = ""                  # folder for the timm export
    trust_urls: bool = False


def load_classifier(cfg, ckpt: Path, n_classes: int, in_chans: int):
    """The run's classifier alone (its EMA when the run kept one), weights checked strictly."""
    model = create_backbone(cfg.model, n_classes, in_chans)
    load_classifier_weights(model, checkpoint.classifier_file(ckpt))
    return model.eval()


def names_a_split(opts: Options) -> bool:
    """--data is one card's folder, local or in a bucket: --split picks the split read."""
    return bool(opts.data) and len(opts.data) == 1 and names_card(opts.data[0])


def dataset(cfg, opts: Options):
    """(card, card path, shard URLs or None): the shards to predict on, or the card that names
    the classes and normalization for --images. Shard patterns are passed to resolve() as the
    val and test shards too, so the card's other splits, which prediction never reads (and
    which are not local when the shards are in a bucket), are not looked up."""
    if opts.data:
        folder = names_a_split(opts)
        ds = data.resolve(*(opts.data,) * (1 if folder else 3), trust=opts.trust_urls)
        if folder and opts.split not in ds.urls:
            raise DataError(f"--data {opts.data[0]}: the dataset has no {opts.split!r} split")
        return ds.card, ds.card_path, ds.urls[opts.split] if folder else ds.urls["train"]
    if opts.card:
        return read_card(Path(opts.card)), Path(opts.card), None
    ds = data.resolve(cfg.data, cfg.data, cfg.data, trust=opts.trust_urls)   # the run's own card
    return ds.card, ds.card_path, None


def predict(cfg, ckpt: Path, opts: Options, acc) -> dict | None:
    """Everything but flag parsing. Returns summary.json's content on the main process."""
    if opts.export:
        export.check_exportable(cfg.model)      # refused before the predictions, not after
    card, card_path, urls = dataset(cfg, opts)
    classes = card["classes"]
    aug = data.spec_from_card(card, cfg.image_size)
    norm = (tuple(card["normalize"]["mean"]), tuple(card["normalize"]["std"]))
    model = load_classifier(cfg, ckpt, len(classes), aug.channels).to(acc.device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch = opts.batch_size or cfg.batch_size
    workers = cfg.workers if opts.workers is None else opts.workers
    part = Part(acc.process_index, acc.num_processes)
    if urls is not None:
        spec = ReadSpec(aug, train=False, batch_size=batch, seed=cfg.seed)
        ld = data.Loader(urls, spec, len(classes), workers=workers, noise=None, part=part,
                         sizes=shard_counts(card))
        batches, total = ld(0), (ld.expected(0) or None) if acc.num_processes == 1 else None
    else:
        paths = infer.list_images(opts.images)
        batches = infer.image_batches(paths, aug, batch, workers, part.rank, part.world)
        total = len(range(part.rank, len(paths), part.world))
    bar = progress.bar(total=total, desc="predict", unit="img", disable=not acc.is_main_process,
                       interval=opts.interval)
    mine = infer.predict(model, batches, norm, acc.device, opts.top_k, bar, acc.autocast, cfg.channels_last)
    bar.close()
    parts = gather_object([mine]) if acc.num_processes > 1 else [mine]
    if not acc.is_main_process:
        return None
    p = infer.merge(parts)
    if not len(p):
        raise DataError("no sample could be read: nothing to predict (see the skipped records above)")
    ids = (outputs.shard_ids(p, card_path.with_suffix(".parquet"), card["num_indices"]) if urls is not None
           else {"path": [str(paths[i]) for i in p.index]})
    out = safe_io.out_dir(opts.out)
    outputs.write_predictions(outputs.table(p, classes, ids), out)
    report = evaluation.evaluate(p.label, p.clean, p.top_class, p.top_prob, classes) if urls is not None else None
    if report:
        outputs.write_report(report, classes, out)
    summary = {"samples": len(p), "skipped": len(p.skipped), "skipped_records": [list(r) for r in p.skipped[:100]],
               "checkpoint": str(ckpt), "model": cfg.model, "source": opts.data or opts.images,
               "split": opts.split if urls is not None and names_a_split(opts) else None,
               "card": str(card_path), "top_k": opts.top_k, "device": str(acc.device),
               "processes": acc.num_processes}
    if report:
        summary |= {k: report.get(k) for k in ("accuracy", "accuracy_clean")}
        summary["ece"] = report["calibration"]["ece"]
    if opts.export:
        data_cfg = export.data_config(aug.channels, aug.size, aug.resize, *norm)
        unwrapped = load_classifier(cfg, ckpt, len(classes), aug.channels)     # CPU, plain memory format
        summary["export"] = str(export.export(unwrapped, cfg.model, classes, data_cfg, Path(opts.export),
                                              {"checkpoint": str(ckpt), "card": str(card_path)}))
    safe_io.write_json(out / "summary.json", summary)
    return summary


def export_only(cfg, ckpt: Path, opts: Options) -> Path:
    """--export without predicting (no --data, no --images): the run's card gives the classes
    and normalization."""
    export.check_exportable(cfg.model)          # before anything is read
    card, card_path, _ = dataset(cfg, replace(opts, data=None))
    aug = data.spec_from_card(card, cfg.image_size)
    norm = (tuple(card["normalize"]["mean"]), tuple(card["normalize"]["std"]))
    model = load_classifier(cfg, ckpt, len(card["classes"]), aug.channels)
    return export.export(model, cfg.model, card["classes"], export.data_config(aug.channels, aug.size, aug.resize, *norm),
                         Path(opts.export), {"checkpoint": str(ckpt), "card": str(card_path)})

