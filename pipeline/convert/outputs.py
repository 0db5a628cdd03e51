"""What a finished conversion leaves: empty shards removed and the rest renumbered, the
manifest, the card written last, and an older conversion's shards removed."""
import json
import os
import re
from pathlib import Path

from pipeline import safe_io, shardset
from pipeline.convert import sources
from pipeline.convert.manifest import write_manifest
from pipeline.convert.plan import Plan, card_options
from pipeline.shards import MAX_CARD, DataError


def drop_empty_shards(results: list[dict], out: Path) -> list[dict]:
    """A shard whose every image was unreadable is an empty tar, which DALI refuses (its index
    needs a sample) and stock webdataset reads as an error: delete it and renumber the split's
    later shards, so names stay contiguous for brace patterns. Deterministic, like the rest."""
    for split in sources.SPLITS:
        mine = [r for r in results if r["split"] == split]
        if all(r["count"] for r in mine):
            continue
        for r in mine:
            if not r["count"]:
                (out / r["file"]).unlink()
                shardset.index_path(out / r["file"]).unlink()
        for i, r in enumerate([k for k in mine if k["count"]]):
            new = shardset.renumbered(r["file"], i)
            if new != r["file"]:
                os.replace(out / r["file"], out / new)
                os.replace(shardset.index_path(out / r["file"]), shardset.index_path(out / new))
                r["file"] = new
    return [r for r in results if r["count"]]


def write_outputs(src, p: Plan, results: list[dict], args, fixes=None, bucket=None) -> dict:
    """The manifest, then the card, in args.out. bucket (--out s3://..., convert/bucket.py):
    args.out is the local staging folder, the shards are already in the bucket, empty ones are
    dropped there, and the manifest and the card are uploaded, each once it is complete."""
    skipped = src.skipped + [s for r in results for s in r["skipped"]]
    results = bucket.drop_empty_shards(results) if bucket else drop_empty_shards(results, args.out)
    if not results:
        first = f" (first: {skipped[0]['source']}: {skipped[0]['reason']})" if skipped else ""
        raise DataError(f"no image converted: {len(skipped)} skipped{first}; nothing written")
    card = shardset.make_card(args.name, args.format, src.classes, src.channels, src.augment, src.normalize,
                              [(r["split"], r["file"], r["count"]) for r in results], p.num_indices, skipped,
                              card_options(args))
    if fixes is not None:
        card["label_fixes"] = {"file": str(args.label_fixes), "sha256": fixes.sha256,
                               "relabelled": fixes.n_relabelled, "dropped": fixes.n_dropped, "kept": fixes.n_kept}
    write_manifest(p, results, args.out / f"{args.name}.parquet")
    safe_io.write_json(args.out / f"{args.name}.json", card)   # the card last: it marks the set complete
    if bucket:
        bucket.upload_final(args.out / f"{args.name}.parquet")
        bucket.upload_final(args.out / f"{args.name}.json")
    return card


def remove_stale_shards(out: Path, name: str, card: dict) -> list[str]:
    """Delete NAME-NNN / NAME-val-NNN / NAME-test-NNN tars and indexes in `out` that the new
    card does not list: left by an older conversion with other options, a brace pattern would
    still train on them. Runs after the card is written, so a kill in between leaves the new
    set complete with extra files (verify_shards names them), never a card without shards."""
    others = [_maybe_card(o) for o in out.glob("*.json") if o.name != f"{name}.json"]
    stale = stale_files([p.name for p in out.iterdir()], name, card, others)
    for f in stale:
        (out / f).unlink()
    remove_temporaries(out, name)
    return stale


def stale_files(files: list[str], name: str, card: dict, other_cards: list[dict]) -> list[str]:
    """Which of `files` (names in one folder or bucket prefix) are NAME's tars and indexes that
    neither the new card nor another card there (`other_cards`: a dataset named NAME-val, say)
    lists."""
    def own(f: str) -> bool:                 # NAME's shards and their indexes
        return shardset.is_shard_of(f[:-4] + ".tar", name) and f.endswith((".tar", ".idx"))
    keep = _listed_files(card) | {f for other in other_cards for f in _listed_files(other)}
    keep |= {shardset.index_path(f) for f in keep if f.endswith(".tar")}
    return sorted(f for f in files if own(f) and f not in keep)


def remove_temporaries(out: Path, name: str) -> None:
    """safe_io's temporaries of NAME's files (".NAME-000.tar.x1y2.tmp/", ".NAME.json.x1y2.tmp")
    that a killed run or part left: the set is complete now, and verify_shards would name them."""
    temp = re.compile(rf"\.{re.escape(name)}((-val|-test)?-[0-9]+\.(tar|idx)|\.json|\.parquet)\.\w+\.tmp")
    for p in out.iterdir():
        if temp.fullmatch(p.name) and p.is_symlink():
            p.unlink()
        elif temp.fullmatch(p.name):
            safe_io.remove(p)


def _listed_files(card: dict) -> set[str]:
    return {s.get("file") for sp in card.get("splits", {}).values() for s in sp.get("shards", [])}


def _maybe_card(path: Path) -> dict:
    try:
        return as_card(safe_io.read_capped(path, MAX_CARD, "card"))   # a planted FIFO must not hang
    except (OSError, ValueError):               # DataError (a FIFO, too large) is a ValueError
        return {}


def as_card(raw: bytes | None) -> dict:
    """A card's JSON, {} for anything else (another JSON file beside the shards)."""
    try:
        card = json.loads(raw) if raw is not None else {}
        return card if isinstance(card, dict) and isinstance(card.get("splits"), dict) else {}
    except (ValueError, AttributeError):
        return {}
