"""Dataset layouts -> the records of each split, for tools/make_shards.py.

A record is (key, label, clean_label, source) where source is a file path or, for MNIST,
a uint8 pixel array. Every layout returns the same thing, so the writer never branches: a
split is a pipeline.convert.columns.Records (columns, not a Python object a sample; the
Clothing1M reader builds the columns directly, the smaller layouts give tuples, converted)."""
import errno
import hashlib
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path


import numpy as np
import pyarrow as pa

from pipeline import safe_io
from pipeline.records import make_key
from pipeline.shards import DataError
from pipeline.convert.columns import CHUNK, Records, as_records

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")
MAX_TABLE = 64 << 30       # a source table: paths and labels, ~100 bytes a row


@dataclass
class Source:
    classes: list[str]
    splits: dict[str, Records]                      # split -> (key, label, clean, source) rows
    augment: dict = field(default_factory=dict)     # the training recipe, written to the card
    channels: int = 3
    normalize: dict = field(default_factory=lambda: {"mean": [0.485, 0.456, 0.406],
                                                     "std": [0.229, 0.224, 0.225]})
    skipped: list[dict] = field(default_factory=list)   # {key, source, reason}: for the card
    notes: list[str] = field(default_factory=list)      # said on stderr, not errors

    def __post_init__(self):
        self.splits = {k: as_records(v) for k, v in self.splits.items()}


# issue 10: named training recipes for `make_shards.py --recipe`, replacing the format's default
# (an image folder or table gets ImageNet's random_resized 224 unless told otherwise).
# cifar: the authors' code's RandomCrop(32, padding=4) + horizontal flip at 32x32.
RECIPES = {"cifar": {"size": 32, "crop": "pad_random", "pad": 4, "flip": True}}


def carve_val(records, fraction: float, seed: int) -> tuple[Records, Records]:
    """A seeded (train, val) partition; order inside each part is kept."""
    records = as_records(records)
    chosen = np.zeros(len(records), bool)
    chosen[random.Random(seed).sample(range(len(records)), round(len(records) * fraction))] = True
    return records.take(np.flatnonzero(~chosen)), records.take(np.flatnonzero(chosen))


def mnist(root: Path, val_fraction: float, seed: int) -> Source:
    """MNIST's four idx files (raw or .gz, also torchvision's MNIST/raw layout). Read as they
    are, without MD5 checks (fetch_mnist checks what it downloads), so Fashion-MNIST and
    KMNIST, which share the layout, convert too."""
    from pipeline.convert.mnist_idx import FILES, find_existing, read_idx
    arrays = {}
    for name, (base, _, _) in FILES.items():
        path = find_existing(root, base)
        if path is None:
            raise DataError(f"mnist source {root}: {base}[.gz] not found (run tools/fetch_mnist.py {root} first)")
        try:
            arrays[name] = read_idx(path)
        except (OSError, ValueError) as e:
            raise DataError(f"mnist source {path}: {e}") from None
    for split in ("train", "test"):   # zip below would silently drop the unmatched tail
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"mnist source {root}: {split} images {images.shape} and labels {labels.shape} do not match")
    d = arrays
    train = [(f"mnist_train_{i:05d}", int(y), int(y), x) for i, (x, y)
             in enumerate(zip(d["train_images"], d["train_labels"]))]
    test = [(f"mnist_test_{i:05d}", int(y), int(y), x) for i, (x, y)
            in enumerate(zip(d["test_images"], d["test_labels"]))]
    train, val = carve_val(train, val_fraction, seed)
    return Source([str(i) for i in range(10)], {"train": train, "val": val, "test": test},
                  augment={"size": 28, "crop": "none", "flip": False}, channels=1,
                  normalize={"mean": [0.1307], "std": [0.3081]})


def _find_txt(root: Path, name: str) -> Path:
    for p in (root / name, root / "annotations" / name):
        if p.exists():
            return p
    raise DataError(f"clothing1m source {root}: {name} not found at the root or under annotations/")


def _lines(path: Path):
    """(line number, stripped line) of the non-blank lines, streamed."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line.strip()


def _chunked(items, kind) -> pa.ChunkedArray:
    """An Arrow column from a stream, CHUNK values at a time: no list of the whole stream, and
    no concatenated copy (at 10^6 paths, that copy was the conversion's peak)."""
    chunks, buf = [], []
    for v in items:
        buf.append(v)
        if len(buf) == CHUNK:
            chunks.append(pa.array(buf, kind))
            buf = []
    chunks.append(pa.array(buf, kind))
    return pa.chunked_array(chunks, kind)


def _digests(names: list[str]) -> np.ndarray:
    """A 128-bit BLAKE2b digest per name (numpy V16): the label files are joined on digests,
    which sort and search as 16-byte values, instead of a hash table of 10^6 strings (that
    table was the conversion's peak memory). Two names share a digest with odds ~n^2 / 2^129."""
    return np.frombuffer(b"".join(hashlib.blake2b(n.encode("utf-8", "surrogateescape"), digest_size=16).digest()
                                  for n in names), "V16")


def _column_digests(names: pa.ChunkedArray) -> np.ndarray:
    return np.concatenate([_digests(names.slice(i, CHUNK).to_pylist()) for i in range(0, len(names), CHUNK)]
                          or [np.zeros(0, "V16")])


def _kv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 'PATH LABEL' file as (sorted digests of the paths, their labels); a path listed twice
    keeps its last label. The paths themselves are not kept."""
    digests, labels, names, values = [], [], [], []
    for n, line in _lines(path):
        try:
            k, v = line.split()
            values.append(int(v))
        except ValueError:
            raise DataError(f"{path} line {n}: expected 'PATH LABEL', got {line[:80]!r}") from None
        names.append(k)
        if len(names) == CHUNK:
            digests.append(_digests(names))
            labels.append(np.array(values, np.int64))
            names, values = [], []
    digests.append(_digests(names))
    labels.append(np.array(values, np.int64))
    d, y = np.concatenate(digests), np.concatenate(labels)
    del digests, labels                                # before the sort's copies: the peak
    order = np.argsort(d, kind="stable")               # stable: a path's lines stay in file order
    d, y = d[order], y[order]
    del order
    last = np.append(d[1:] != d[:-1], True)            # the last line of each path
    return d[last], y[last]


def _key_list(path: Path) -> pa.ChunkedArray:
    return _chunked((ln for _, ln in _lines(path)), pa.string())


def _lookup(names: pa.ChunkedArray, kv: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each name's label in a _kv table (-1 where it has none) and whether it has one."""
    d, y = kv
    q = _column_digests(names)
    if not len(d):
        return np.full(len(q), -1, np.int64), np.zeros(len(q), bool)
    at = np.minimum(np.searchsorted(d, q), len(d) - 1)
    found = d[at] == q
    return np.where(found, y[at], -1), found


def clothing1m(root: Path, val_fraction: float, seed: int) -> Source:
    """Noisy train (given = noisy label, clean label where the clean list has the key),
    clean val, clean test. Recipe: shorter side 256, random 224 crop, flip. Read as columns:
    the label files as digests and labels, each split as its names alone (key and path are
    made from the name when read; pipeline/convert/columns.Records): at 10^6 samples ~40 MB, where
    Python tuples took ~400 MB."""
    classes = [ln.strip() for ln in _find_txt(root, "category_names_eng.txt").read_text().split("\n") if ln.strip()]
    lists = {"train": "noisy_train_key_list.txt", "val": "clean_val_key_list.txt", "test": "clean_test_key_list.txt"}
    names = {split: _key_list(_find_txt(root, name)) for split, name in lists.items()}
    labels = {}
    clean = _kv(_find_txt(root, "clean_label_kv.txt"))
    for split in ("val", "test"):
        labels[split] = (_known(names[split], clean),) * 2
    train_clean = _lookup(names["train"], clean)[0]
    del clean
    labels["train"] = (_known(names["train"], _kv(_find_txt(root, "noisy_label_kv.txt"))), train_clean)
    splits = {split: Records(None, *labels[split], names[split], root=str(root)) for split in lists}
    return Source(classes, splits, augment={"size": 224, "resize": 256, "crop": "random", "flip": True})


def _known(names: pa.ChunkedArray, kv) -> np.ndarray:
    label, found = _lookup(names, kv)
    if not found.all():
        raise DataError(f"clothing1m: {names[int(np.argmin(found))].as_py()} has no label in its kv file")
    return label


def _iter(strings: pa.Array):
    for start in range(0, len(strings), CHUNK):
        yield from strings.slice(start, CHUNK).to_pylist()


def _visible(p: Path) -> bool:
    """Not a dot-entry: .ipynb_checkpoints, .DS_Store, macOS '._x.jpg' files are no data."""
    return not p.name.startswith(".")


def _images(folder: Path, root: Path, skipped: list) -> list[Path]:
    """The image files under `folder`, dot-entries and their contents left out. A dangling
    symlink or a symlink loop is listed in `skipped` (is_file() is False for both, so they
    would vanish without a word)."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(root)
        if not all(_visible(Path(part)) for part in rel.parts) or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if p.is_file():
            out.append(p)
        elif p.is_symlink():
            skipped.append({"key": make_key(rel.as_posix()), "source": str(p), "reason": _broken_link(p)})
    return out


def _broken_link(p: Path) -> str:
    try:
        p.resolve(strict=True)
    except RuntimeError:                 # what Python 3.11's pathlib raises on a loop
        return "symlink loop"
    except OSError as e:                 # 3.13 raises ELOOP instead
        return "symlink loop" if e.errno == errno.ELOOP else f"dangling symlink to {os.readlink(p)}"
    return "symlink to something that is not a file"


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def imagefolder(root: Path, val_fraction: float, seed: int) -> Source:
    """root/CLASS/*.jpg, or root/{train,val,test}/CLASS/*.jpg. Dot-entries are skipped; a
    class folder without images stays a class (its label id is kept) and is named in a note."""
    split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if not split_dirs:
        split_dirs = {"train": root}
    classes = [p.name for p in _class_dirs(split_dirs.get("train", next(iter(split_dirs.values()))))]
    if not classes:
        raise DataError(f"imagefolder source {root}: no class folders")
    index = {c: i for i, c in enumerate(classes)}
    splits, skipped, notes = {}, [], []
    for split, folder in split_dirs.items():
        recs = []
        for cdir in _class_dirs(folder):
            if cdir.name not in index:
                raise DataError(f"imagefolder: class {cdir.name!r} in {split}/ is not among train's classes")
            images = _images(cdir, root, skipped)
            if not images:
                notes.append(f"class folder {cdir.name!r} holds no images in {folder}: it stays class "
                             f"{index[cdir.name]}, with no {split} samples")
            for img in images:
                rel = img.relative_to(root).as_posix()
                recs.append((make_key(rel), index[cdir.name], index[cdir.name], str(img)))
        splits[split] = recs
    if "val" not in splits and val_fraction > 0:
        splits["train"], splits["val"] = carve_val(splits["train"], val_fraction, seed)
    return Source(classes, splits, augment={"size": 224, "crop": "random_resized", "flip": True},
                  skipped=skipped, notes=notes)


def _cell(v) -> str:
    """A label cell as text; integral floats (pandas' int columns with gaps) as ints; a missing
    value (None, NaN, empty) as ''."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _is_int(v: str) -> bool:
    return re.fullmatch(r"-?[0-9]+", v) is not None


def table(path: Path, val_fraction: float, seed: int, classes: list[str] | None = None) -> Source:
    """A Parquet or CSV table: path, label[, clean_label][, split]. A label column of integers
    holds ids into the classes (default 0..max), any other holds class names (default: the
    sorted names seen); a missing or -1 clean_label means unknown. Paths are relative to the
    table's folder unless absolute."""
    import pyarrow
    import pyarrow.csv
    import pyarrow.parquet
    # a CSV's path column is text even when every name looks like a number ('0001' stays '0001')
    as_text = pyarrow.csv.ConvertOptions(column_types={"path": pyarrow.string()})
    safe_io.check_regular(path, MAX_TABLE, "table")           # a FIFO would hang the read
    try:
        t = (pyarrow.parquet.read_table(path) if path.suffix.lower() == ".parquet"
             else pyarrow.csv.read_csv(path, convert_options=as_text))
    except (pyarrow.ArrowException, OSError) as e:
        # pyarrow's CSV errors end with the row's text ("got 1: <row>"): the file is not echoed
        why = re.sub(r"(got \d+ ?\w*):.*", r"\1", str(e).splitlines()[0]) if str(e) else type(e).__name__
        raise DataError(f"table {path}: cannot read it ({why})") from None
    for need in ("path", "label"):
        if need not in t.column_names:
            raise DataError(f"table {path}: missing column {need!r} (has {sorted(t.column_names)})")
    kind = t.schema.field("path").type
    if not (pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind) or pyarrow.types.is_null(kind)):
        raise DataError(f"table {path}: column 'path' holds {kind}, not file paths (text)")
    cols = t.to_pydict()
    n = len(cols["label"])
    if n == 0:
        raise DataError(f"table {path}: no rows")
    labels = [_cell(v) for v in cols["label"]]
    clean = [_cell(v) for v in cols.get("clean_label", [None] * n)]
    clean = ["" if v == "-1" else v for v in clean]
    by_id = {"label": all(_is_int(v) for v in labels),
             "clean_label": all(_is_int(v) for v in clean if v)}
    if classes is None:
        classes = [str(i) for i in range(max(map(int, labels)) + 1)] if by_id["label"] else sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}

    def to_id(v, row, column):
        if by_id[column] and 0 <= int(v) < len(classes):
            return int(v)
        if not by_id[column] and v in index:
            return index[v]
        raise DataError(f"table {path}: row {row} {column} {v!r} is outside the class set ({len(classes)} classes)")
    split = [str(v) for v in cols.get("split", ["train"] * n)]
    splits: dict[str, list] = {}
    for i in range(n):
        if split[i] not in SPLITS:
            raise DataError(f"table {path}: row {i} split {split[i]!r} is not one of {SPLITS}")
        if not cols["path"][i] or not labels[i]:
            raise DataError(f"table {path}: row {i} has no {'path' if not cols['path'][i] else 'label'}")
        p = Path(cols["path"][i])
        p = p if p.is_absolute() else path.parent / p
        c = to_id(clean[i], i, "clean_label") if clean[i] else -1
        splits.setdefault(split[i], []).append((make_key(cols["path"][i]), to_id(labels[i], i, "label"), c, str(p)))
    if "val" not in splits and val_fraction > 0 and "train" in splits:
        splits["train"], splits["val"] = carve_val(splits["train"], val_fraction, seed)
    return Source(classes, splits, augment={"size": 224, "crop": "random_resized", "flip": True})


def check_unique_keys(src: Source) -> None:
    """Two records with one key would be one sample to every reader: name both sources.
    An int64 hash per key (Python's, in this process), sorted: 8 bytes a sample, where a hash
    table of the strings (pyarrow's unique) was the conversion's peak at 10^6 samples (+75 MB).
    Keys whose hashes meet are compared as text, so a hash collision is no false alarm."""
    parts = [r for r in src.splits.values() if len(r)]
    if not parts:
        return
    hashes = np.fromiter((hash(k) for r in parts for k in r.iter_keys()), np.int64, sum(map(len, parts)))
    order = np.argsort(hashes, kind="stable")
    sorted_ = hashes[order]
    met = np.flatnonzero(sorted_[1:] == sorted_[:-1])
    for h in np.unique(sorted_[met]):               # usually none: hashes that meet
        seen = {}
        for i in order[np.searchsorted(sorted_, h):np.searchsorted(sorted_, h, side="right")].tolist():
            key, _, _, source = _record_at(parts, i)
            if key in seen:
                raise DataError(f"duplicate key {key!r}: {_name(seen[key])} and {_name(source)} map to the "
                                "same sample key (rename one; keys drop the extension and turn '/' and "
                                "punctuation into '_')")
            seen[key] = source


def _record_at(parts: list[Records], i: int) -> tuple:
    for r in parts:
        if i < len(r):
            return r[int(i)]
        i -= len(r)


def _name(source) -> str:
    return source if isinstance(source, str) else "an array"


def check_labels(src: Source) -> None:
    """Every given label names a class; every clean label too, or is -1 (unknown)."""
    k = len(src.classes)
    for split, recs in src.splits.items():
        bad = (recs.labels < 0) | (recs.labels >= k) | (recs.clean < -1) | (recs.clean >= k)
        if bad.any():
            key, label, clean, _ = recs[int(np.argmax(bad))]
            raise DataError(f"{split} sample {key!r}: label {label if not 0 <= label < k else clean} "
                            f"is outside the {k} classes")
