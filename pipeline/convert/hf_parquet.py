"""A Hugging Face dataset saved as Parquet in the Hub's layout -> make_shards' records
(`make_shards.py hf ROOT`), read with pyarrow alone (the `datasets` library is not needed).

The layout `datasets` writes (push_to_hub, the Hub's Parquet conversion):
  - an image column of structs {bytes: binary, path: string} (the Image feature) and a label
    column of integers (the ClassLabel feature);
  - the features as JSON in the schema metadata under the key `huggingface`:
    {"info": {"features": {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel",
    "names": [...]}}}}: the class names come from there;
  - splits as files `data/train-00000-of-00003.parquet`, `test-00000-of-00001.parquet`, or
    as folders `train/0000.parquet`; `validation`, `valid` and `dev` mean val.

Memory stays flat in the number of rows: the labels are read one column at a time in batches
(4 bytes a row), a sample's source is the text `FILE::ROW` (FILE relative to ROOT), and the
image bytes are read only when its shard is written, one row group at a time (the last one
decoded is kept per process: a shard's rows are consecutive, so each row group is decoded
once; the Hub writes row groups of a few hundred images)."""
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.shards import DataError

SEP = "::"                               # FILE::ROW, a source that is a Parquet row
SPLIT_NAMES = {"train": "train", "validation": "val", "valid": "val", "val": "val", "dev": "val",
               "test": "test"}
_FILE_SPLIT = re.compile(r"^(?P<split>[A-Za-z]+)(?:[-_.]|$)")


def is_row(source) -> bool:
    return isinstance(source, str) and ".parquet" + SEP in source and source.rsplit(SEP, 1)[1].isdigit()


def split_of(path: Path, root: Path) -> str | None:
    """The split a Parquet file belongs to: its name's first word (`train-00000-of-00001`,
    `test.parquet`), else the nearest folder named for a split (`train/0000.parquet`)."""
    m = _FILE_SPLIT.match(path.stem)
    if m and m.group("split").lower() in SPLIT_NAMES:
        return SPLIT_NAMES[m.group("split").lower()]
    for folder in path.relative_to(root).parent.parts[::-1]:
        if folder.lower() in SPLIT_NAMES:
            return SPLIT_NAMES[folder.lower()]
    return None


def find_files(root: Path) -> dict[str, list[Path]]:
    """split -> its Parquet files in name order (a single file: the train split)."""
    if root.is_file():
        return {"train": [root]}
    files: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*.parquet")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        split = split_of(path, root)
        if split is None:
            raise DataError(f"hf source {root}: cannot tell the split of {path.relative_to(root)} "
                            "(name it train-*, validation-*, test-* or put it in a train/, validation/, test/ folder)")
        files.setdefault(split, []).append(path)
    if not files:
        raise DataError(f"hf source {root}: no .parquet files")
    return files


def features(schema: pa.Schema) -> dict:
    """The `datasets` features from the schema metadata ({} when the file has none)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError:
        return {}
    feats = meta.get("info", {}).get("features", {}) if isinstance(meta, dict) else {}
    return feats if isinstance(feats, dict) else {}


def columns(schema: pa.Schema, path: Path) -> tuple[str, str, list | None]:
    """(image column, label column, class names or None) by the features, else by name."""
    feats = features(schema)
    image = next((k for k, f in feats.items() if isinstance(f, dict) and f.get("_type") == "Image"), None)
    label = next((k for k, f in feats.items() if isinstance(f, dict) and f.get("_type") == "ClassLabel"), None)
    image = image or next((c for c in ("image", "img") if c in schema.names), None)
    label = label or next((c for c in ("label", "labels") if c in schema.names), None)
    if image is None or label is None:
        raise DataError(f"hf source {path}: no image and label columns (an Image and a ClassLabel feature, "
                        f"or columns image/label; has {schema.names})")
    kind = schema.field(image).type
    if not (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0):
        raise DataError(f"hf source {path}: column {image!r} holds {kind}, not images ({{bytes, path}} structs)")
    if not pa.types.is_integer(schema.field(label).type):
        raise DataError(f"hf source {path}: column {label!r} holds {schema.field(label).type}, not class ids")
    names = feats.get(label, {}).get("names") if isinstance(feats.get(label), dict) else None
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DataError(f"hf source {path}: the ClassLabel names of {label!r} are not a list of text")
    return image, label, names


def read_split(files: list[Path], root: Path, want: tuple[str, str] | None):
    """(keys, labels int32, sources, columns, names) of one split's files, the labels a batch
    at a time. Keys: FILESTEM_ROW (no dots); sources: REL_FILE::ROW."""
    keys, labels, sources, cols, names = [], [], [], want, None
    for path in files:
        try:
            f = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as e:
            raise DataError(f"hf source {path}: not a readable Parquet file ({type(e).__name__})") from None
        image, label, file_names = columns(f.schema_arrow, path)
        if cols is not None and (image, label) != cols:
            raise DataError(f"hf source {path}: columns {image!r}/{label!r}, other files have {cols[0]!r}/{cols[1]!r}")
        cols, names = (image, label), names or file_names
        parts = [b.column(0).to_numpy(zero_copy_only=False) for b in
                 f.iter_batches(batch_size=65536, columns=[label], use_threads=False)]
        lab = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if (lab < 0).any():                              # -1: no label (a Hub test split): unusable here
            raise DataError(f"hf source {path}: {int((lab < 0).sum())} rows without a label (-1)")
        rows = pa.array(np.arange(len(lab), dtype=np.int64)).cast(pa.string())
        rel = path.relative_to(root).as_posix() if path != root else path.name
        stem = re.sub(r"[^0-9A-Za-z_-]", "_", rel.rsplit(".", 1)[0])
        keys.append(pc.binary_join_element_wise(stem + "_", rows, ""))
        sources.append(pc.binary_join_element_wise(rel + SEP, rows, ""))
        labels.append(lab.astype(np.int32))
    return (pa.chunked_array(keys, pa.string()), np.concatenate(labels), pa.chunked_array(sources, pa.string()),
            cols, names)


# ---- reading a row's image bytes, when its shard is written (in the worker) ----
_OPEN: dict = {}         # the last file: {"path", "file", "starts" (first row of each row group), "image"}
_GROUP: dict = {}        # the last row group decoded: {"key": (path, group), "first": row, "bytes": array}


def row_bytes(source: str) -> bytes:
    """The image bytes of the Parquet row `source` (FILE::ROW; Records joins FILE to its root)."""
    path, row = source.rsplit(SEP, 1)
    row = int(row)
    if _OPEN.get("path") != path:
        f = pq.ParquetFile(path)
        sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
        _OPEN.update(path=path, file=f, starts=np.cumsum([0] + sizes), image=columns(f.schema_arrow, Path(path))[0])
    starts = _OPEN["starts"]
    if not 0 <= row < starts[-1]:
        raise ValueError(f"row {row} is past the end of {Path(path).name}")
    g = int(np.searchsorted(starts, row, side="right")) - 1
    if _GROUP.get("key") != (path, g):
        col = _OPEN["file"].read_row_group(g, columns=[_OPEN["image"]], use_threads=False).column(0).combine_chunks()
        _GROUP.update(key=(path, g), first=int(starts[g]), bytes=col.field("bytes"))
    data = _GROUP["bytes"][row - _GROUP["first"]].as_py()
    if data is None:
        raise ValueError("the image's bytes are not in the file (a path-only Image row)")
    return data

def hf(root: Path, val_fraction: float, seed: int, classes: list[str] | None = None):
    """make_shards' `hf` format -> sources.Source. Class names: --classes, else the ClassLabel
    names of the schema metadata, else 0..max label (said in a note). No clean labels (-1)."""
    from pipeline.convert.columns import Records
    from pipeline.convert.sources import SPLITS, Source, carve_val
    files = find_files(root)
    base = root if root.is_dir() else root.parent
    splits, names, cols, notes = {}, None, None, []
    for split in SPLITS:
        if split not in files:
            continue
        keys, labels, sources, cols, file_names = read_split(files[split], base, cols)
        names = names or file_names
        splits[split] = Records(keys, labels, np.full(len(labels), -1, np.int32), sources, root=str(base))
    if classes is None:
        classes = names
    if classes is None:
        top = max((int(r.labels.max()) for r in splits.values() if len(r)), default=-1)
        classes = [str(i) for i in range(top + 1)]
        notes.append(f"hf source {root}: no ClassLabel names in the schema metadata: classes are 0..{top} "
                     "(pass --classes to name them)")
    if "val" not in splits and val_fraction > 0 and "train" in splits:
        splits["train"], splits["val"] = carve_val(splits["train"], val_fraction, seed)
    return Source(classes, splits, augment={"size": 224, "crop": "random_resized", "flip": True}, notes=notes)
