"""Existing WebDataset shards -> make_shards' records (`make_shards.py wds SOURCE`): shards that
img2dataset, webdataset.TarWriter or a colleague wrote, adopted without re-encoding.

What the readers need that foreign shards lack: each sample's global index and clean label
(`KEY.json`), the label as a class id (`KEY.cls`), DALI's `KEY.ids` and `.idx`, and the card and
manifest. So adoption writes new shards, shard by shard and resumable like any conversion; the
image bytes go in as they are when they are JPEG or 8-bit PNG (pipeline/convert/images.py), only
other formats are re-encoded. The foreign tars are read twice: once here for the keys and labels
(image members are seeked past, only label members are read), once when their images are
copied.

  - keys: webdataset's rule, the member's base name up to its first dot (folders kept),
    made tar-safe by pipeline.records.make_key (img2dataset's `000000123` stays as it is);
  - labels (--label-field): `cls` (default: ASCII decimal, as TarWriter writes an int), `txt`
    (the text), or `json:FIELD` (a field of the sample's JSON, e.g. img2dataset's
    `--save_additional_columns '[label]'`); integers are class ids, other text class names;
  - classes: --classes (names, or a file with one name a line), else 0..max for ids or the
    sorted names seen;
  - splits: SOURCE's tars are train, or SOURCE/train/, SOURCE/val/ (or validation/), SOURCE/test/
    hold each split's tars; --val-fraction carves val from train. Other files (img2dataset's
    .parquet and _stats.json beside its tars) are not read.
  - in a bucket: SOURCE may be `s3://b/p/x-{000..009}.tar` (a brace pattern: train), one tar's
    URL, or a bucket folder laid out as above (`gs://` too). The tars are read through fsspec
    (pipeline/remote.py), never a shell, in both passes; the manifest's `source` is then the
    tar's URL with `::N`.
A sample without a label member, or with one that does not parse, is skipped and listed with
its shard; a cut-off or damaged tar keeps the samples before the damage and is named too."""
import json
from pathlib import Path

import braceexpand
import numpy as np
import pyarrow as pa

from pipeline import remote
from pipeline.records import make_key, split_member
from pipeline.shards import DataError
from pipeline.tario import iter_tar

SEP = "::"                       # TAR::N: the N-th image member of a foreign tar
SPLIT_DIRS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
FORMATS = ("jpg", "jpeg", "png", "webp")   # image members taken (jpeg/webp: re-encoded if needed)


def is_member(source) -> bool:
    return isinstance(source, str) and ".tar" + SEP in source and source.rsplit(SEP, 1)[1].isdigit()


def find_tars(root) -> dict[str, list]:
    """split -> the tars to adopt (Paths, or URLs for a source in a bucket)."""
    if remote.is_object_url(root):
        found = _bucket_tars(root)
    elif root.is_file():
        return {"train": [root]}
    else:
        dirs = {SPLIT_DIRS[d.name]: d for d in sorted(root.iterdir()) if d.is_dir() and d.name in SPLIT_DIRS}
        found = {split: sorted(d.glob("*.tar")) for split, d in dirs.items()} if dirs else {"train": sorted(root.glob("*.tar"))}
    found = {s: t for s, t in found.items() if t}
    if not found:
        raise DataError(f"wds source {root}: no .tar files (in it, or in train/, val/, test/)")
    return found


def _bucket_tars(url: str) -> dict[str, list[str]]:
    """The same layouts in a bucket: a brace pattern or one tar (train, each one must exist),
    or a folder of tars or of train/, val/, test/ folders of them."""
    if url.endswith(".tar"):
        tars = list(braceexpand.braceexpand(url))
        listed = {folder: remote.sizes(folder) for folder in {t.rsplit("/", 1)[0] for t in tars}}
        missing = [t for t in tars if t.rsplit("/", 1)[1] not in listed[t.rsplit("/", 1)[0]]]
        if missing:
            raise DataError(f"wds source: {missing[0]} not found" + (f" (and {len(missing) - 1} more)" if missing[1:] else ""))
        return {"train": tars}
    dirs = {SPLIT_DIRS[d]: remote.join(url, d) for d in remote.folders(url) if d in SPLIT_DIRS}
    return {split: [remote.join(folder, f) for f in sorted(remote.sizes(folder)) if f.endswith(".tar")]
            for split, folder in (dirs or {"train": url}).items()}


def _open(tar):
    return remote.open_url(tar) if remote.is_object_url(tar) else open(tar, "rb")


def _size(tar) -> int:
    return remote.size(tar) if remote.is_object_url(tar) else Path(tar).stat().st_size


def parse_label_field(spec: str) -> tuple[str, str]:
    kind, _, field = spec.partition(":")
    if kind not in ("cls", "txt", "json") or (kind == "json") != bool(field):
        raise DataError(f"--label-field {spec!r}: use cls, txt or json:FIELD")
    return kind, field


def label_of(kind: str, field: str, data: bytes):
    """The label text or id from the label member's bytes; ValueError when it holds none."""
    if kind == "json":
        value = json.loads(data)
        if not isinstance(value, dict) or field not in value:
            raise ValueError(f"its json has no field {field!r}")
        value = value[field]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"json field {field!r} holds {type(value).__name__}, not a label")
        return value
    text = data.decode("utf-8").strip()
    if not text:
        raise ValueError(f"empty {kind}")
    return int(text) if kind == "cls" else (int(text) if text.lstrip("-").isdigit() else text)


def scan(tar, rel: str, kind: str, field: str, skipped: list) -> list[tuple[str, object, str]]:
    """(key, label, source) per sample with an image, in tar order; problems go to `skipped`."""
    images: dict[str, int] = {}             # key -> ordinal among the image members taken
    order = [0]

    def want(name: str) -> bool:            # sees every member: images are counted, not read
        key, ext = split_member(name)
        if ext.lower() in FORMATS:
            if key not in images:
                images[key] = order[0]
            order[0] += 1
            return False
        return ext == kind               # the label member: read

    labels: dict[str, object] = {}
    try:
        with _open(tar) as f:
            for name, data in iter_tar(f, want):
                key = split_member(name)[0]
                try:
                    labels[key] = label_of(kind, field, data)
                except (ValueError, UnicodeDecodeError) as e:
                    labels[key] = ValueError(f"bad {kind} member: {e}")
            cut_off(f, tar)
    except (OSError, ValueError, EOFError) as e:
        skipped.append({"key": "", "source": rel, "reason": f"shard damaged, read up to here: {type(e).__name__}: {e}"})
    out = []
    for key, n in images.items():
        label = labels.get(key)
        if label is None or isinstance(label, ValueError):
            why = str(label) if label is not None else f"no {kind} member (see --label-field)"
            skipped.append({"key": make_key(key), "source": f"{rel}{SEP}{n}", "reason": why})
            continue
        out.append((make_key(key), label, f"{rel}{SEP}{n}"))
    return out


def cut_off(f, tar) -> None:
    """EOFError when the scan ended past the file's end (a member seeked past was cut off) or the
    tar lacks its end-of-archive blocks (cut at a member boundary): the readers' seek past
    image members finds neither by itself."""
    size = _size(tar)
    if f.tell() > size:
        raise EOFError("tar cut off inside a member")
    f.seek(max(0, size - 1024))
    if size < 1024 or f.read(1024).strip(b"\0"):
        raise EOFError("tar cut off: no end-of-archive blocks")


def class_list(spec: str, seen: list) -> tuple[list[str], bool]:
    """(class names, labels are ids) from --classes (names, or a file of names) or the labels."""
    by_id = all(isinstance(v, int) for v in seen)
    if spec:
        names = Path(spec).read_text().split("\n") if Path(spec).is_file() else spec.split(",")
        return [n.strip() for n in names if n.strip()], by_id
    if by_id:
        return [str(i) for i in range(max(seen, default=-1) + 1)], True
    if any(isinstance(v, int) for v in seen):
        raise DataError("wds: the labels mix class ids and names; pass --classes")
    return sorted(set(seen)), False


def wds(root, val_fraction: float, seed: int, classes: str = "", label_field: str = "cls"):
    """make_shards' `wds` format -> sources.Source (sources as TAR::N, relative to root)."""
    from pipeline.convert.columns import Records
    from pipeline.convert.sources import Source, carve_val
    kind, field = parse_label_field(label_field)
    in_bucket = remote.is_object_url(root)
    base = None if in_bucket else root if root.is_dir() else root.parent   # bucket sources: whole URLs
    skipped, per_split = [], {}
    for split, tars in find_tars(root).items():
        per_split[split] = [r for t in tars
                            for r in scan(t, t if in_bucket else t.relative_to(base).as_posix(), kind, field, skipped)]
    seen = [label for recs in per_split.values() for _, label, _ in recs]
    names, by_id = class_list(classes, seen)
    index = {n: i for i, n in enumerate(names)}
    splits = {}
    for split, recs in per_split.items():
        ids = np.array([v if by_id else index.get(v, -1) for _, v, _ in recs], np.int64)
        if by_id and ((ids < 0) | (ids >= len(names))).any() or not by_id and (ids < 0).any():
            bad = next(r for r, i in zip(recs, ids) if not 0 <= i < len(names))
            raise DataError(f"wds: {split} sample {bad[0]!r} label {bad[1]!r} is outside the {len(names)} classes")
        splits[split] = Records(pa.array([k for k, _, _ in recs], pa.string()), ids.astype(np.int32),
                                np.full(len(recs), -1, np.int32), pa.array([s for _, _, s in recs], pa.string()),
                                root=None if base is None else str(base))
    if "val" not in splits and val_fraction > 0 and "train" in splits:
        splits["train"], splits["val"] = carve_val(splits["train"], val_fraction, seed)
    return Source(names, splits, augment={"size": 224, "crop": "random_resized", "flip": True}, skipped=skipped)


# ---- a member's bytes, when its new shard is written (in the worker) ----
_OPEN: dict = {}           # {"tar", "file", "members": iterator of image members, "next": ordinal}


def member_bytes(source: str) -> bytes:
    """The N-th image member of a tar (TAR::N), read through the tar in order: a shard's
    records come in tar order, so a tar is read once per shard written (reopened only when a
    record lies behind the last one read)."""
    tar, n = source.rsplit(SEP, 1)
    n = int(n)
    if _OPEN.get("tar") != tar or n < _OPEN["next"]:
        if "file" in _OPEN:
            _OPEN["file"].close()
        f = _open(tar)
        _OPEN.update(tar=tar, file=f, next=0,
                     members=iter_tar(f, lambda name: split_member(name)[1].lower() in FORMATS))
    try:
        for _, data in _OPEN["members"]:
            _OPEN["next"] += 1
            if _OPEN["next"] - 1 == n:
                return data
    except EOFError as e:                   # a cut-off member: a skip, like an unreadable file
        _OPEN["file"].close()
        _OPEN.clear()
        raise ValueError(f"{Path(tar).name}: {e}") from None
    _OPEN["file"].close()
    _OPEN.clear()
    raise ValueError(f"image member {n} not found in {Path(tar).name} (the tar changed or is cut off)")
