"""verify_shards' comparison of a manifest (NAME.parquet, written by pipeline/convert/manifest.py)
with what the tars hold, in Arrow columns (docs/architecture.md section 8).

The tars arrive as one table, a row per sample in tar order (key, shard position, label, index,
clean); the manifest is a stranger's file, cast to the writer's types first. Per-key work is a
hash count, a sort and an element-wise compare; a group-by runs only where a key repeats, so a
healthy set of 10^6 samples builds no per-key hash table beyond the counts."""
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import records
from pipeline.shardset import MANIFEST_SCHEMA

# every column but `source` (where a sample came from, which the tars do not hold)
MANIFEST_COLUMNS = [f.name for f in MANIFEST_SCHEMA if f.name != "source"]
MANIFEST_TYPES = [MANIFEST_SCHEMA.field(c).type for c in MANIFEST_COLUMNS]
COMPARED = ["split", "shard", "label", "index", "clean"]


def duplicated(keys: pa.ChunkedArray) -> pa.Array:
    """The values of `keys` that occur more than once (a hash count in Arrow)."""
    counts = pc.value_counts(keys)
    return counts.field("values").filter(pc.greater(counts.field("counts"), 1))


def manifest_problems(tars: pa.Table, tar_dups: pa.Array, man: pa.Table, listed: list,
                      classes: list) -> list[str]:
    """The manifest against the tars: each key once, the same keys, the same (split, shard,
    label, index, clean) per key (the tars' first copy of a repeated key, the manifest's last
    row, as a reader would), and so the same counts per split and class. `tar_dups`: the
    tars' repeated keys (verify_shards has counted them already)."""
    man, problems = typed(man)
    if man is None:
        return problems
    man_dups = duplicated(man["key"])
    problems += [f"manifest: key {k} listed twice" for k in man_dups.to_pylist()]
    man = man.rename_columns(["key", "split", "shard", "index", "label", "clean"])
    man = _one_per_key(man, COMPARED, "last") if len(man_dups) else man
    found = tars.select(["key", "shard", "label", "index", "clean"])
    found = _one_per_key(found, COMPARED[1:], "first") if len(tar_dups) else found
    files = pa.array([f for _, f, _ in listed], pa.string())
    splits = pa.array([s for s, _, _ in listed], pa.string())
    found = found.append_column("split", splits.take(found["shard"])).set_column(   # names, as the manifest's
        found.schema.get_field_index("shard"), "shard", files.take(found["shard"]))
    in_tars = pc.is_in(man["key"], value_set=found["key"])
    in_man = pc.is_in(found["key"], value_set=man["key"])
    problems += _lost(man.filter(pc.invert(in_tars)))
    for r in found.filter(pc.invert(in_man)).sort_by("key").select(["key", "shard"]).to_pylist():
        problems.append(f"{r['shard']}: {r['key']} is not in the manifest")
    problems += _differences(found.filter(in_man).sort_by("key"), man.filter(in_tars).sort_by("key"))
    problems += _count_problems(_class_counts(found), _class_counts(man), classes)
    return problems


def typed(man: pa.Table) -> tuple[pa.Table | None, list[str]]:
    """A stranger's manifest in the writer's column types (a label of "3" is a problem, not a
    crash of the comparison), rows without a key dropped; (None, [problem]) when a column
    does not convert."""
    cols = []
    for c, want in zip(MANIFEST_COLUMNS, MANIFEST_TYPES):
        try:
            cols.append(man[c].cast(want))
        except pa.lib.ArrowException as e:
            return None, [f"manifest: column {c} is {man[c].type}, not {want} ({short(e)})"]
    man = pa.table(cols, names=MANIFEST_COLUMNS)
    keyless = man["key"].null_count
    return (man.filter(pc.is_valid(man["key"])) if keyless else man,
            [f"manifest: {keyless} row(s) without a key"] if keyless else [])


def short(e) -> str:
    return records.error_text(e)[:120]


def _one_per_key(t: pa.Table, columns: list[str], how: str) -> pa.Table:
    """One row per key: its first (or last) in t's order; single-threaded, so the order holds."""
    agg = t.group_by("key", use_threads=False).aggregate([(c, how) for c in columns])
    return agg.rename_columns(["key" if c == "key" else c.rsplit("_", 1)[0] for c in agg.column_names])


def _lost(lost: pa.Table) -> list[str]:
    """Manifest rows no tar holds, a line per shard the manifest names."""
    by_shard: dict = {}
    for r in lost.sort_by("key").select(["key", "shard"]).to_pylist():
        by_shard.setdefault(r["shard"], []).append(r["key"])
    out = []
    for shard, keys in sorted(by_shard.items(), key=lambda kv: str(kv[0])):
        more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
        out.append(f"manifest: {len(keys)} sample(s) of {shard} are in no tar: {', '.join(keys[:3])}{more}")
    return out


def _differences(found: pa.Table, man: pa.Table) -> list[str]:
    """Row i of each is the same key (both hold each common key once, sorted): a sort-and-align
    where a join would build a hash table of every key."""
    if not len(found):
        return []
    differ = None
    for c in COMPARED:
        a, b = found[c], man[c]
        same = pc.or_kleene(pc.equal(a, b), pc.and_(pc.is_null(a), pc.is_null(b)))
        bad = pc.invert(pc.fill_null(same, False))
        differ = bad if differ is None else pc.or_(differ, bad)
    intact = pc.and_(pc.is_valid(found["label"]), pc.is_valid(found["index"]))   # damaged: its problem is listed
    rows = pc.and_(differ, intact)
    out = []
    for r, m in zip(found.filter(rows).to_pylist(), man.filter(rows).to_pylist()):
        tar, mine = tuple(r[c] for c in COMPARED), tuple(m[c] for c in COMPARED)
        out.append(f"{tar[1]}: {r['key']}: tar has (split, shard, label, index, clean) {tar}, the manifest {mine}")
    return out


def _class_counts(t: pa.Table) -> dict[tuple, int]:
    agg = t.group_by(["split", "label"]).aggregate([("key", "count")])
    return {(s, l): c for s, l, c in zip(agg["split"].to_pylist(), agg["label"].to_pylist(), agg["key_count"].to_pylist())}


def _count_problems(tar_counts: dict, man_counts: dict, classes: list) -> list[str]:
    out = []
    for split, label in sorted(tar_counts.keys() | man_counts.keys(), key=str):
        a, b = tar_counts.get((split, label), 0), man_counts.get((split, label), 0)
        if a != b:
            cls = classes[label] if isinstance(label, int) and 0 <= label < len(classes) else label
            out.append(f"split {split} class {cls!r}: {a} samples in the tars, {b} in the manifest")
    return out
