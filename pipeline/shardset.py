"""The shard set's layout, one definition for the conversion that writes it and everything that
reads it (the CPU and DALI backends, verify_shards, a resumed conversion): shard file names,
the DALI `.idx` beside each tar, the dataset card's fields and check, the manifest's columns
(docs/architecture.md sections 4 and 8). A sample's own layout is pipeline/records.py.

Nothing here opens a file for writing (the conversion writes through pipeline/safe_io.py) or
raises DataError (pipeline/shards.py, which says which file is at fault, does): this module
sits below both."""
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.records import split_member
from pipeline.tario import BLOCK, MAX_MEMBER

# ---- shard file names: NAME-000.tar (train), NAME-val-000.tar, NAME-test-000.tar ----
_TAIL = r"(?:-(?P<split>val|test))?-(?P<num>[0-9]{3,})\.tar"
SHARD_FILE = re.compile(rf"(?P<name>.+?){_TAIL}")


def shard_file(name: str, split: str, number: int) -> str:
    """The file name of a split's shard `number`: three digits at least, so that names sort."""
    return f"{name if split == 'train' else f'{name}-{split}'}-{number:03d}.tar"


def renumbered(file: str, number: int) -> str:
    """`file` (a shard file name) with its number replaced."""
    return f"{file.rsplit('-', 1)[0]}-{number:03d}.tar"


def dataset_of(file: str) -> str | None:
    """The dataset NAME of a shard file name (its card is NAME.json), None for another name."""
    m = SHARD_FILE.fullmatch(file)
    return m.group("name") if m else None


def is_shard_of(file: str, name: str) -> bool:
    """Whether `file` is named as one of dataset `name`'s shards (any split)."""
    return re.fullmatch(re.escape(name) + _TAIL, file) is not None


# ---- the DALI index beside each tar (DALI's `wds2idx` format) ----
def index_path(tar):
    """The `.idx` beside a tar (NAME-000.tar -> NAME-000.idx), as a str or Path like `tar`."""
    idx = Path(tar).with_suffix(".idx")
    return idx if isinstance(tar, Path) else str(idx)


def index_text(tar_path) -> str:
    """The index of a written tar, v1.2: a header `v1.2 N`, then one line per sample of
    `ext data_offset size name` per member; a sample is the run of members sharing a key
    (webdataset's rule, records.split_member: the first dot of the base name)."""
    groups: list[list[str]] = []
    last = None
    with tarfile.open(tar_path, mode="r", encoding="utf-8") as tar:
        for m in tar.getmembers():
            key, ext = split_member(m.name)
            if key != last:
                groups.append([])
                last = key
            groups[-1].append(f"{ext} {m.offset_data} {m.size} {m.name}")
    return f"v1.2 {len(groups)}\n" + "".join(" ".join(g) + "\n" for g in groups)


@dataclass(frozen=True)
class Index:
    """A parsed index. samples: per sample, its members as (ext, data offset, size, name);
    name is "" in a v1.1 index, which lists none. declared: the header's sample count (None
    when the header has none)."""
    version: str
    declared: int | None
    samples: list[tuple[tuple[str, int, int, str], ...]]

    @property
    def end(self) -> int:
        """Bytes the tar must have for every member the index lists."""
        return max((o + z for s in self.samples for _, o, z, _ in s), default=0)

    def keys(self) -> list[str] | None:
        """The sample keys in order (from each sample's first member), None for a v1.1 index."""
        return [split_member(s[0][3])[0] for s in self.samples] if self.version == "v1.2" else None


def parse_index(text: str, file_size: int | None = None, strict: bool = True) -> Index:
    """The one reader of an index; ValueError says why `text` is not one.

    strict (a reader that seeks by it, pipeline/cpu.py): v1.2 as index_text writes it (single
    spaces, plain decimals), members in file order without overlap, on block boundaries, none
    above tario.MAX_MEMBER or past `file_size`, as many samples as the header says: an index is
    a file like any other, never trusted blindly. Lenient (DALI's scan, verify_shards, the
    conversion's resume, which each report what they find): v1.1 (`ext offset size` per member)
    or v1.2, any whitespace, no offset or count checks."""
    lines = text.split("\n")
    head = lines[0].split(" ") if strict else lines[0].split()
    if strict and (len(head) != 2 or head[0] != "v1.2" or not head[1].isdigit()):
        raise ValueError("not a v1.2 index header")
    version = head[0] if head else ""
    declared = int(head[1]) if len(head) > 1 and head[1].isdigit() else None
    width = 4 if version == "v1.2" else 3
    samples, end = [], 0
    for line in lines[1:]:
        fields = line.split(" ") if strict else line.split()
        if not line or not fields:
            continue
        if len(fields) % width:
            raise ValueError(f"a line of {len(fields)} fields, not {width} per member")
        members = []
        for i in range(0, len(fields), width):
            ext, offset, size = fields[i:i + 3]
            name = fields[i + 3] if width == 4 else ""
            if strict:
                if not (offset.isdigit() and size.isdigit()):
                    raise ValueError(f"offset {offset!r} or size {size!r} is not a number")
                offset, size = int(offset), int(size)
                if offset < end + BLOCK or offset % BLOCK or size > MAX_MEMBER or offset + size > file_size:
                    raise ValueError(f"member {name!r} out of order, overlapping or past the end")
                end = offset + size
            else:
                offset, size = int(offset), int(size)
            members.append((ext, offset, size, name))
        samples.append(tuple(members))
    if strict and len(samples) != declared:
        raise ValueError(f"{len(samples)} samples, the header says {declared}")
    return Index(version, declared, samples)


# ---- the dataset card (NAME.json) ----
def make_card(name: str, format: str, classes: list[str], channels: int, augment: dict, normalize: dict,
              shards: list[tuple[str, str, int]], num_indices: int, skipped: list, options: dict) -> dict:
    """The card of a converted set, its fields in their written order (the card's bytes are
    compared across runs). shards: (split, file, count) of every shard, in plan order."""
    splits: dict[str, dict] = {}
    for split, file, count in shards:
        sp = splits.setdefault(split, {"shards": [], "count": 0})
        sp["shards"].append({"file": file, "count": count})
        sp["count"] += count
    return {"name": name, "format": format, "classes": classes, "channels": channels, "augment": augment,
            "normalize": normalize, "splits": splits, "num_indices": num_indices, "skipped": skipped,
            "options": options}


def card_problem(card) -> str | None:
    """What is wrong with a card's fields the readers index into, or None: a card from a
    stranger fails with one line instead of a TypeError deep in the loader."""
    ok_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # noqa: E731
    if not isinstance(card, dict) or "splits" not in card or "classes" not in card:
        return "lacks 'splits' or 'classes'"
    if not (isinstance(card["classes"], list) and card["classes"] and all(isinstance(c, str) for c in card["classes"])):
        return "'classes' must be a non-empty list of names"
    if not isinstance(card["splits"], dict):
        return "'splits' must be an object"
    for name, sp in card["splits"].items():
        shards = sp.get("shards") if isinstance(sp, dict) else None
        if not (isinstance(shards, list) and ok_int(sp.get("count"))
                and all(isinstance(x, dict) and isinstance(x.get("file"), str) and ok_int(x.get("count")) for x in shards)):
            return f"splits.{name} must hold 'count' and 'shards' [{{\"file\": NAME, \"count\": N}}, ...]"
    if not ok_int(card.get("num_indices")):          # noise, subsets and fixes are indexed by it
        return "'num_indices' must be a non-negative integer"
    return None


# ---- the manifest (NAME.parquet): one row per written sample ----
MANIFEST_SCHEMA = pa.schema([
    ("key", pa.string()), ("split", pa.string()), ("shard", pa.string()), ("index", pa.int64()),
    ("label", pa.int64()), ("clean_label", pa.int64()), ("source", pa.string())])
