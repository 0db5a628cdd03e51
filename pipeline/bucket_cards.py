"""A dataset card that lives in a bucket (`--data s3://bucket/prefix/` or the card's URL).

The readers take a card as a local file (its `.parquet` manifest beside it, and the card path
is opened by every DataLoader worker, forked or spawned), so the card and the manifest of a
bucket folder are fetched into a local cache that mirrors the bucket's layout:

    $LIMIT_CACHE/buckets/s3/BUCKET/PREFIX/NAME.json   (LIMIT_CACHE default ~/.cache/limit)

A shard URL `s3://BUCKET/PREFIX/NAME-000.tar` then finds its card by a path computation alone
(pipeline.shards.card_path_for: no network in a worker), and a card found there resolves its
shard names beside itself in the bucket, not in the cache (pipeline.shards.split_urls).

The cache is refreshed by every command that names shards in the bucket (pipeline.shards.expand,
in the main process, before any worker starts): the card is fetched again, the manifest when
the card's bytes or the manifest's size changed (make_shards writes both from the same plan),
and a cached copy whose bucket card is gone is removed. So the cache never speaks for a bucket
folder as it was at an earlier command; without a card in the bucket a local copy in the
current folder is used, as before. Files are written through pipeline/safe_io.py (whole or not
at all, never through a link).

Trust is the command line's: only a URL typed there reaches this module (a run's config.json
and a card's shard list are checked by pipeline.shards.check_file_url first); the card's own
entries must be names beside it like a local card's."""
import json
import os
from pathlib import Path

from pipeline import remote, safe_io, shardset
from pipeline.shards import MAX_CARD, DataError

MAX_MANIFEST = 4 << 30        # ~100 bytes a sample: 10^7 samples fit


def cache_root() -> Path:
    return Path(os.environ.get("LIMIT_CACHE") or Path.home() / ".cache" / "limit") / "buckets"


def mirror(folder_url: str) -> Path:
    """The local folder that holds a bucket folder's card: cache_root()/SCHEME/BUCKET/PREFIX."""
    parts = folder_url.split("://", 1)[1].strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise DataError(f"{folder_url}: a bucket folder with an empty, '.' or '..' part is not supported")
    return cache_root().joinpath(remote.scheme(folder_url), *parts)


def origin(card_path) -> str | None:
    """The bucket folder a cached card came from (`s3://b/p/`), None for any other card."""
    try:
        rel = Path(os.path.abspath(card_path)).parent.relative_to(os.path.abspath(cache_root()))
    except ValueError:
        return None
    sch, *parts = rel.parts
    return f"{sch}://{'/'.join(parts)}/" if parts else None


def shard_folder(card_path) -> str | Path:
    """Where a card's shards are: its bucket folder for a card fetched from a bucket (the
    cache holds the card and manifest only), else the card's own folder. What reads a sample's
    image by its manifest row (pipeline.records.find_images: thumbnails, suspects, exports)
    looks there."""
    return origin(card_path) or Path(card_path).parent


def cached_card(shard_url: str) -> Path | None:
    """The cached card of a shard URL's dataset, when the cache holds one."""
    folder, file = shard_url.rsplit("/", 1)
    name = shardset.dataset_of(file)
    if name is None:
        return None
    try:
        card = mirror(folder) / f"{name}.json"
    except DataError:
        return None
    return card if card.is_file() else None


def find_card(url: str) -> str:
    """The URL of the one dataset card in a bucket folder (`s3://b/p/`), or `url` itself when
    it names a `.json`. A folder's `.json` objects are read (capped) to tell cards apart."""
    if url.endswith(".json"):
        return url
    cards = []
    for name in sorted(n for n in remote.sizes(url) if n.endswith(".json")):
        try:
            data = remote.read_capped(remote.join(url, name), MAX_CARD, "dataset card")
            if data is not None and isinstance(card := _json(data), dict) and "splits" in card:
                cards.append(name)
        except DataError:
            continue
    if len(cards) != 1:
        raise DataError(f"expected one dataset card in {url}, found {len(cards)}"
                        + (f" ({', '.join(cards[:3])})" if cards else ""))
    return remote.join(url, cards[0])


def fetch(card_url: str) -> Path:
    """The card at `card_url` (and its manifest) refreshed in the cache -> the local card path."""
    folder, file = card_url.rsplit("/", 1)
    data = remote.read_capped(card_url, MAX_CARD, "dataset card")
    if data is None:
        raise DataError(f"dataset card not found: {card_url}")
    return _store(folder, file, data)


def refresh_for(shard_urls: list[str]) -> None:
    """Bring the cache up to date for the bucket folders and datasets of these shard URLs:
    each card found beside them is fetched, a cached copy whose card is gone is removed."""
    seen = set()
    for url in shard_urls:
        folder, file = url.rsplit("/", 1)
        name = shardset.dataset_of(file)
        if name is None or (folder, name) in seen:
            continue
        seen.add((folder, name))
        data = remote.read_capped(remote.join(folder, f"{name}.json"), MAX_CARD, "dataset card")
        if data is not None:
            _store(folder, f"{name}.json", data)
        elif (card := cached_card(url)) is not None:
            safe_io.remove(card.with_suffix(".parquet"), missing_ok=True)   # another rank may be first
            safe_io.remove(card, missing_ok=True)


def _store(folder: str, file: str, data: bytes) -> Path:
    """Card bytes (and the manifest beside them in the bucket) written into the cache; the
    manifest first, so a cached card always has the manifest it was written with."""
    local = safe_io.out_dir(mirror(folder), "card cache folder") / file
    manifest, url = local.with_suffix(".parquet"), remote.join(folder, file[:-len(".json")] + ".parquet")
    size = remote.sizes(folder).get(manifest.name)
    same = local.is_file() and local.read_bytes() == data
    if size is None:
        safe_io.remove(manifest, missing_ok=True)
    elif size > MAX_MANIFEST:
        raise DataError(f"manifest {url}: larger than {MAX_MANIFEST >> 30} GiB")
    elif not (same and manifest.is_file() and manifest.stat().st_size == size):
        with safe_io.temp_path(manifest) as tmp:
            remote.download(url, tmp)
    if not same:
        safe_io.write_bytes(local, data)
    return local


def _json(data: bytes):
    try:
        return json.loads(data)
    except ValueError:
        return None
