"""The checks of tools/verify_shards.py: a shard set against its card and manifest, read with
the trainer's own tar reader (what the checks are: that script's docstring)."""
import io
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pipeline import records, shardset
from pipeline.shards import DataError, read_card
from pipeline.tario import iter_tar
from pipeline.convert.manifest_check import MANIFEST_COLUMNS, duplicated, manifest_problems, short

# What damaged shards raise while being read or decoded (PIL: SyntaxError on a broken PNG chunk)
BAD_DATA = (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, SyntaxError,
            Image.DecompressionBombError)


def read_shard(path: str, n_classes: int) -> dict:
    """One shard: its samples [(key, label, index, clean)], problems and member layout.
    Runs in a worker process; decodes every image in full."""
    name = Path(path).name
    samples, problems, groups, broken = [], [], [], True
    try:
        with open(path, "rb") as f:
            for key, members in records.group_members(iter_tar(f), BAD_DATA):
                groups.append(key)
                problems += [f"{name}: {key}: {p}" for p in _check_sample(key, members, n_classes, samples)]
        broken = False
    except FileNotFoundError:
        problems.append(f"{name}: missing (the card lists it)")
    except BAD_DATA as e:
        problems.append(f"{name}: cut off or unreadable after {len(groups)} samples ({type(e).__name__}: {e})")
    return {"file": name, "samples": samples, "problems": problems, "keys": groups, "broken": broken}


def _check_sample(key: str, members: list, n_classes: int, samples: list) -> list[str]:
    problems = []
    exts = [e for e, _ in members]
    repeated = sorted({e for e in exts if exts.count(e) > 1})
    if repeated:
        problems.append(f"members repeated ({', '.join(repeated)}): the key is written twice")
    m = dict(members)
    images = [e for e in exts if e in records.IMAGE_EXTS]
    if not images:
        problems.append("no jpg or png member")
    else:
        problems += _check_image(m[images[0]])
    label = None
    if "cls" not in m:
        problems.append("no cls member")
    else:
        try:
            label = records.parse_label(m["cls"])
            try:
                records.label_in_range(label, n_classes)
            except ValueError as e:
                problems.append(str(e))
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"bad cls: {short(e)}")
    index = clean = None
    try:
        index, clean = records.parse_ids(m)
    except (KeyError, ValueError, TypeError):   # TypeError: a JSON value of the wrong type
        problems.append("no readable ids or json member (index, clean label)")
    if "ids" in m and label is not None and len(m["ids"]) == 3 * records.IDS_DTYPE.itemsize:
        ids_label = int(np.frombuffer(m["ids"], dtype=records.IDS_DTYPE)[0])
        if ids_label != label:
            problems.append(f"ids says label {ids_label}, cls says {label}")
    if "ids" in m and "json" in m and index is not None:
        try:
            if records.parse_meta(m["json"]) != (index, clean):
                problems.append(f"json says (index, clean) {records.parse_meta(m['json'])}, ids says {(index, clean)}")
        except (KeyError, ValueError, TypeError):
            problems.append("unreadable json member")
    for what, v in (("index", index), ("clean label", clean)):
        if v is not None and not -2**63 <= v < 2**63:
            problems.append(f"{what} {v} does not fit in 64 bits")
    samples.append((key, label, index, clean))
    return problems


def _check_image(data: bytes) -> list[str]:
    """Decode every pixel, unless the header shows more than the readers' pixel limit (they
    skip it without decoding; so does this). A 16-bit PNG decodes, but DALI skips it."""
    head = records.image_header(data)
    too_big = records.pixel_problem(*head[:2]) if head else None
    if too_big:
        return [f"image {too_big}: the readers skip it"]
    try:
        Image.open(io.BytesIO(data)).load()
    except BAD_DATA as e:
        return [f"image does not decode ({type(e).__name__}: {short(e)})"]
    if head and data[:4] == b"\x89PNG" and head[2] > 8:
        return [f"{head[2]}-bit PNG: --backend dali skips it (tools/make_shards.py stores 8-bit)"]
    return []


def check_index(tar: Path, keys: list[str]) -> list[str]:
    """The DALI index beside a tar: one line per sample, the same keys, inside the file."""
    idx = shardset.index_path(tar)
    if not idx.is_file():
        return [f"{idx.name}: missing (the DALI backend needs it)"]
    try:
        index = shardset.parse_index(idx.read_text(encoding="utf-8", errors="replace"), strict=False)
        if index.declared is None:
            raise ValueError("no sample count in its header")
    except (OSError, ValueError) as e:
        return [f"{idx.name}: unreadable ({type(e).__name__}: {e})"]
    rows, names, end = index.samples, index.keys(), index.end
    problems = []
    if index.declared != len(rows) or len(rows) != len(keys):
        problems.append(f"{idx.name}: {len(rows)} samples, header says {index.declared}, the tar has {len(keys)}")
    elif names is not None and names != keys:
        problems.append(f"{idx.name}: keys differ from the tar's")
    if tar.is_file() and end > tar.stat().st_size:
        problems.append(f"{idx.name}: points {end} bytes into a {tar.stat().st_size}-byte tar")
    return problems


def verify(folder: Path, name: str, workers: int = 1) -> tuple[list[str], str]:
    """-> (problems, summary). What is kept per sample is columnar (an Arrow string and three
    int64s, ~60 B at 10^6 samples, where per-key dicts of tuples took ~1.1 KB): the cross-shard
    and manifest checks are sorts, hash counts and joins in Arrow, and only the samples named
    in a problem become Python objects."""
    problems: list[str] = []
    try:
        card = read_card(folder / f"{name}.json")
    except DataError as e:
        return [str(e)], ""
    classes, n_indices = card["classes"], card.get("num_indices")
    n_classes = len(classes)
    listed = [(split, s["file"], s["count"]) for split, sp in card["splits"].items() for s in sp["shards"]]
    for split, sp in card["splits"].items():
        total = sum(s["count"] for s in sp["shards"])
        if sp.get("count") != total:
            problems.append(f"card: split {split} says {sp.get('count')} samples, its shards {total}")
    tars = _read_tars(folder, listed, n_classes, workers, problems)
    tar_dups = duplicated(tars["key"])
    problems += _cross_shard_problems(tars, tar_dups, [f for _, f, _ in listed], n_indices)
    manifest = folder / f"{name}.parquet"
    try:
        man = pq.read_table(manifest, columns=MANIFEST_COLUMNS)
    except (OSError, ValueError, KeyError) as e:   # pyarrow's errors derive from these
        problems.append(f"manifest {manifest.name}: unreadable ({type(e).__name__}: {short(e)})")
        man = None
    if man is not None:
        problems += manifest_problems(tars, tar_dups, man, listed, classes)
    # ---- leftovers ----
    names = {f for _, f, _ in listed} | _listed_by_other_cards(folder, name)
    for p in sorted(folder.iterdir()):
        if shardset.is_shard_of(p.name, name) and p.name not in names:
            problems.append(f"{p.name}: a shard the card does not list")
        if p.name.lstrip(".").startswith(name) and p.name.endswith(".tmp"):   # safe_io's are ".NAME..."
            problems.append(f"{p.name}: an unfinished file (a killed make_shards run? re-run it)")
    counts = ", ".join(f"{s} {sp.get('count')}" for s, sp in card["splits"].items())
    summary = (f"{folder / name}: {len(listed)} shards, {counts} samples, {n_classes} classes; "
               f"every key once, every image decodes, card and manifest agree")
    return problems, summary


TAR_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.int32()), ("label", pa.int64()),
                        ("index", pa.int64()), ("clean", pa.int64())])


def _read_tars(folder: Path, listed: list, n_classes: int, workers: int, problems: list) -> pa.Table:
    """Every listed tar read (in parallel), its own problems added to `problems`; -> one row per
    sample in tar order: key, shard (the position in `listed`), label, index, clean (null where
    unreadable). Each shard's Python lists become Arrow columns as its result arrives."""
    paths = [str(folder / f) for _, f, _ in listed]
    parts = []
    with ProcessPoolExecutor(workers) if workers > 1 else _Serial() as pool:
        for shard, ((split, file, count), res) in enumerate(zip(listed, pool.map(read_shard, paths, [n_classes] * len(paths)))):
            problems += res["problems"]
            broken = res["broken"]                  # missing or cut off: said once, above
            if len(res["samples"]) != count and not broken:
                problems.append(f"{file}: {len(res['samples'])} samples, the card says {count}")
            if not broken:
                problems += check_index(folder / file, res["keys"])
            keys, labels, indices, cleans = zip(*res["samples"]) if res["samples"] else ((), (), (), ())
            parts.append(pa.table([pa.array(keys, pa.string()), pa.array(np.full(len(keys), shard, np.int32)),
                                   _int64s(labels), _int64s(indices), _int64s(cleans)], schema=TAR_SCHEMA))
    return pa.concat_tables(parts) if parts else TAR_SCHEMA.empty_table()


def _int64s(values) -> pa.Array:
    """int64 with None (and integers that a 64-bit column cannot hold: their problem is already
    listed, label or index out of range) as null."""
    return pa.array([v if v is None or -2**63 <= v < 2**63 else None for v in values], pa.int64())


def _cross_shard_problems(tars: pa.Table, dup: pa.Array, files: list[str], n_indices: int | None) -> list[str]:
    """Keys in more than one place (`dup`: the repeated keys), an index used by two keys,
    indices outside [0, n_indices)."""
    problems = []
    if len(dup):
        rows = tars.filter(pc.is_in(tars["key"], value_set=dup)).select(["key", "shard"]).to_pylist()
        where = defaultdict(list)
        for r in rows:
            where[r["key"]].append(files[r["shard"]])
        for key, found_in in where.items():
            problems.append(f"key {key} appears {len(found_in)} times (in {', '.join(sorted(set(found_in)))})")
    rows = np.flatnonzero(pc.is_valid(tars["index"]).to_numpy(zero_copy_only=False))
    idx = tars["index"].fill_null(0).to_numpy()[rows]
    order = np.argsort(idx, kind="stable")                          # tar order within an index
    ordered = idx[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]]
    first_of = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    name = lambda row: tars["key"][int(row)].as_py()                # noqa: E731 (only for problems)
    for j in np.flatnonzero(~starts):                               # an index seen before
        row, owner = rows[order[j]], rows[order[first_of[j]]]
        if name(row) != name(owner):                                # a repeated key is said above
            problems.append(f"{files[tars['shard'][int(row)].as_py()]}: {name(row)}: "
                            f"index {ordered[j]} also used by {name(owner)}")
    if n_indices is not None:
        for j in np.flatnonzero((idx < 0) | (idx >= n_indices)):
            row = int(rows[j])
            problems.append(f"{files[tars['shard'][row].as_py()]}: {tars['key'][row].as_py()}: "
                            f"index {idx[j]} outside [0, {n_indices})")
    return problems


def _listed_by_other_cards(folder: Path, name: str) -> set[str]:
    """Shards other datasets' cards in the folder list: a dataset named NAME-val has shards
    that look like NAME's val shards."""
    out = set()
    for p in folder.glob("*.json"):
        if p.name == f"{name}.json":
            continue
        try:
            card = read_card(p)
        except DataError:
            continue
        out |= {s["file"] for sp in card["splits"].values() for s in sp["shards"]}
    return out


class _Serial:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def map(self, fn, *its):
        return map(fn, *its)


def report(problems: list[str], show: int) -> list[str]:
    """The first `show` problems, and how many more there are."""
    out = problems[:show]
    if len(problems) > show:
        out.append(f"... and {len(problems) - show} more")
    return out
