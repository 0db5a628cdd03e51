"""Which shards to read: brace patterns, dataset cards, and the split over ranks and workers."""
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import braceexpand

from pipeline import shardset

_ANGLE_RANGE = re.compile(r"<(\d+\.\.\d+)>")


class DataError(ValueError):
    """Bad data arguments: reported as one line with exit code 2."""


# ---- URLs read from files ----
# webdataset opens `pipe:CMD` with a shell and `http:`/`gs:`/`ais:`/... with curl, gsutil and
# friends, so a shard URL is a command. Only the command line may give such URLs: a dataset
# card's shard list and a run's config.json may come from a stranger (docs/architecture.md,
# "Security"). `--trust-urls` on the command line lifts the rule for files you wrote.
TRUST_FLAG = "--trust-urls"


def has_scheme(url: str) -> bool:
    """`pipe:...`, `s3://...`, `https://...`: anything but a plain path or `file:`."""
    return not _is_local(url)


def check_file_url(url: str, where: str, trust: bool = False) -> str:
    """`url` as read from a file (`where` names the file and the field): refused when it has a
    scheme that runs a command or reaches the network, unless the user passed --trust-urls."""
    if not isinstance(url, str) or not url:
        raise DataError(f"{where}: expected a shard path, got {url!r}")
    if has_scheme(url) and not trust:
        raise DataError(f"{where}: refusing the URL {url[:80]!r} read from a file: only the command line may "
                        f"give pipe: or remote URLs (pass {TRUST_FLAG} if you wrote this file)")
    return url


def check_card_entry(name: str, where: str, trust: bool = False) -> str:
    """A card lists its shards by name, beside the card: no scheme, no absolute path, no `..`."""
    check_file_url(name, where, trust)
    if not trust and not has_scheme(name) and (Path(name).is_absolute() or ".." in Path(name).parts):
        raise DataError(f"{where}: shard {name[:80]!r} is not beside the card (absolute or '..'); "
                        f"pass {TRUST_FLAG} if you wrote this card")
    return name
# ---- end URLs read from files ----


def expand(specs: str | list[str], trust: bool = False) -> list[str]:
    """Shard URLs from brace patterns (`a-{000..009}.tar`), the first user's spelling
    (`a-<000..009>.tar`), lists of either, or a folder holding one dataset card (its train
    split): a local folder, or a bucket folder or card URL (`s3://b/p/`, `s3://b/p/NAME.json`,
    pipeline/bucket_cards.py). Local files must exist, and so must `s3://` and `gs://` shards
    (one listing per folder); `pipe:` and other URLs typed by the user are passed through
    unchecked (a card's entries are checked: `trust` is --trust-urls)."""
    from pipeline import bucket_cards, remote     # here: both import DataError from this module
    specs = [specs] if isinstance(specs, str) else list(specs)
    urls: list[str] = []
    patterned: list[str] = []                 # bucket shards named by a pattern, not by a card
    for spec in specs:
        if names_card(spec):
            card_path = (_only_card(Path(spec)) if Path(spec).is_dir()
                         else bucket_cards.fetch(bucket_cards.find_card(spec)))
            urls += split_urls(read_card(card_path), card_path, "train", trust)
            continue
        for url in braceexpand.braceexpand(_ANGLE_RANGE.sub(r"{\1}", spec)):
            if _is_local(url) and not Path(url).exists():
                raise DataError(f"shard not found: {url} (from {spec!r})")
            urls.append(url)
            patterned += [url] if remote.is_object_url(url) else []
    if not urls:
        raise DataError(f"no shards match {specs!r}")
    _not_found(_missing_objects(patterned), "")
    bucket_cards.refresh_for(patterned)       # the card beside them in the bucket, if any, is theirs
    return urls


def names_card(spec: str) -> bool:
    """Whether --data names a dataset card rather than shards: a local folder, or a bucket
    folder or card URL (an s3:// or gs:// URL that does not end in .tar)."""
    from pipeline import remote
    return Path(spec).is_dir() or (remote.is_object_url(spec) and not spec.endswith(".tar"))


def _missing_objects(urls: list[str]) -> list[str]:
    """The bucket shards (s3://, gs://) among `urls` that are not there: one listing per folder."""
    from pipeline import remote
    listed: dict[str, dict] = {}
    missing = []
    for url in filter(remote.is_object_url, urls):
        folder, name = url.rsplit("/", 1)
        if folder not in listed:
            listed[folder] = remote.sizes(folder)
        if name not in listed[folder]:
            missing.append(url)
    return missing


def _not_found(missing: list[str], where: str) -> None:
    if missing:
        raise DataError(f"shard not found: {missing[0]}" + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                        + where)


def absolute_specs(specs):
    """Local paths and patterns made absolute (URLs with a scheme left as they are); None stays."""
    if specs is None:
        return None
    one = isinstance(specs, str)
    out = [s if has_scheme(s) else os.path.abspath(s) for s in ([specs] if one else specs)]
    return out[0] if one else out


def _is_local(url: str) -> bool:
    return ":" not in url.split("/", 1)[0] or url.startswith("file:")


def _only_card(folder: Path) -> Path:
    cards = sorted(p for p in folder.glob("*.json") if _looks_like_card(p))
    if len(cards) != 1:
        raise DataError(f"expected one dataset card in {folder}, found {len(cards)}")
    return cards[0]


def _looks_like_card(path: Path) -> bool:
    try:
        return "splits" in json.loads(path.read_text())
    except (OSError, ValueError):
        return False


def shard_path(url: str) -> str:
    """The shard's path inside a URL: `pipe:aws s3 cp s3://b/x-003.tar -` -> `s3://b/x-003.tar`."""
    if url.startswith("pipe:"):
        tars = re.findall(r"\S+\.tar\b", url[5:])
        return tars[-1] if tars else url
    return url.removeprefix("file:")


def shard_name(url: str) -> str:
    """`x-003.tar`, the key of the card's per-shard counts."""
    return shard_path(url).rsplit("/", 1)[-1]


def card_path_for(url: str) -> Path:
    """The dataset card beside a shard: `dir/NAME-val-003.tar` -> `dir/NAME.json`. For a
    remote shard (`pipe:...`, `s3://...`) a local copy of the card is looked for in the folder
    the URL names; for a bucket shard, in the cache of cards fetched from buckets (filled by
    expand in the main process: a path computation here, no network in a worker); then in the
    current folder."""
    from pipeline import bucket_cards, remote
    path = shard_path(url)
    name = shardset.dataset_of(path.rsplit("/", 1)[-1])
    if name is None:
        raise DataError(f"cannot find the dataset card for {url}: name is not NAME-NNN.tar")
    card = name + ".json"
    if remote.is_object_url(path) and (cached := bucket_cards.cached_card(path)) is not None:
        return cached
    beside = Path(path).with_name(card)
    return beside if beside.exists() or "://" not in path else Path(card)


MAX_CARD = 256 << 20         # a card lists shards and skips: ~100 bytes a shard


def read_card(path: Path) -> dict:
    from pipeline import safe_io      # here, not at the top: safe_io imports DataError from this module
    if not Path(path).exists():
        raise DataError(f"dataset card not found: {path}")
    raw = safe_io.read_capped(path, MAX_CARD, "dataset card")   # a stranger's card may be a FIFO
    try:
        card = json.loads(raw)
    except ValueError as e:
        raise DataError(f"dataset card {path} is not valid JSON: {e}") from None
    why = shardset.card_problem(card)          # the fields the readers index into, typed
    if why:
        raise DataError(f"dataset card {path}: {why}")
    return card


def split_urls(card: dict, card_path: Path, split: str, trust: bool = False) -> list[str]:
    """The shard paths of one split of a card, resolved beside the card (in its bucket folder
    for a card fetched from a bucket, pipeline/bucket_cards.py). A listed shard that
    is not there is an error at start-up, as for a pattern (one that vanishes later is
    skipped with a record, and counts against --max-skip-frac). Entries with a scheme or
    outside the card's folder are refused unless `trust` (--trust-urls)."""
    if split not in card["splits"]:
        raise DataError(f"dataset card {card_path} has no {split!r} split")
    try:
        entries = [s["file"] for s in card["splits"][split]["shards"]]
    except (TypeError, KeyError):
        raise DataError(f"dataset card {card_path}: splits.{split}.shards must be a list of {{\"file\": ..., \"count\": ...}}") from None
    for i, name in enumerate(entries):
        check_card_entry(name, f"dataset card {card_path}, splits.{split}.shards[{i}].file", trust)
    from pipeline import bucket_cards, remote
    base = bucket_cards.origin(card_path)       # a card fetched from a bucket: its shards are there
    urls = [name if has_scheme(name) else remote.join(base, name) if base else str(Path(card_path).parent / name)
            for name in entries]
    missing = [u for u in urls if not has_scheme(u) and not Path(u).exists()] + (_missing_objects(urls) if base else [])
    _not_found(missing, f" ({split} split of the dataset card {card_path})")
    return urls


def shard_counts(card: dict) -> dict[str, int]:
    """Sample count per shard file name, over all splits."""
    return {s["file"]: s["count"] for sp in card["splits"].values() for s in sp["shards"]}


@dataclass(frozen=True)
class Part:
    """Who reads: this process's rank among `world`, for a given epoch."""
    rank: int = 0
    world: int = 1


def epoch_order(urls: list[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    """Shard order for an epoch: a function of (seed, epoch) only, the same on every rank."""
    urls = list(urls)
    if shuffle:
        random.Random(f"{seed}-{epoch}").shuffle(urls)
    return urls


def for_rank(urls: list[str], part: Part) -> list[str]:
    """Round-robin shards over ranks; with fewer shards than ranks this is an error at
    start-up, never a hang (a rank with nothing to read would wait forever)."""
    if len(urls) < part.world:
        raise DataError(f"{len(urls)} shards cannot feed {part.world} ranks: write more, smaller shards")
    return urls[part.rank::part.world]


def for_worker(urls: list[str], worker: int, workers: int) -> list[str]:
    return urls[worker::workers]
