"""The sample layout shared by the shard writer and both readers (design.md section 4).

Each sample in a shard is a group of tar members sharing one key:
  KEY.jpg | KEY.png   image bytes
  KEY.cls             the given label, ASCII decimal (what stock webdataset users expect)
  KEY.json            {"index": global int, "clean_label": int or -1, "source": str}
  KEY.ids             the same three integers as fixed-width little-endian int64
                      [label, index, clean_label]: DALI reads fixed-width bytes directly,
                      where parsing ASCII or JSON inside a pipeline is awkward.
"""
import hashlib
import json
import re
import unicodedata

import numpy as np

IMAGE_EXTS = ("jpg", "png")
IDS_DTYPE = np.dtype("<i8")
_KEY_UNSAFE = re.compile(r"[^\w-]+")     # str patterns: \w is any Unicode letter, digit or _


def make_key(text: str) -> str:
    """A tar-safe key from a source path: no dots (webdataset splits the extension at the
    first dot), no slashes; 'images/0/00/x.jpg' -> 'images_0_00_x', '猫/写真.jpg' -> '猫_写真'.
    Unicode is NFC-normalised first, so a name typed on macOS (decomposed) and on Linux gives
    one key. A name with no letter or digit left gets 'h' + 16 hex digits of its SHA-1."""
    text = unicodedata.normalize("NFC", text)
    stem = text.rsplit(".", 1)[0] if "." in text.rsplit("/", 1)[-1] else text
    key = _KEY_UNSAFE.sub("_", stem).strip("_")
    return key or "h" + hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def split_member(name: str) -> tuple[str, str]:
    """A tar member name -> (sample key, extension), webdataset's rule: the extension starts
    at the first dot of the base name; folders stay part of the key."""
    prefix, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{prefix}/{key}" if prefix else key), ext


def encode_sample(key: str, image: bytes, ext: str, label: int, index: int,
                  clean_label: int, source: str = "") -> dict[str, bytes]:
    """The tar members of one sample, in the order they are written."""
    assert ext in IMAGE_EXTS and "." not in key
    meta = {"index": int(index), "clean_label": int(clean_label), "source": source}
    ids = np.array([label, index, clean_label], dtype=IDS_DTYPE).tobytes()
    return {
        f"{key}.{ext}": image,
        f"{key}.cls": str(int(label)).encode(),
        f"{key}.json": json.dumps(meta, sort_keys=True).encode(),
        f"{key}.ids": ids,
    }


def parse_label(raw: bytes) -> int:
    """The given label from a `cls` member; ValueError when it is not a decimal integer."""
    text = raw.decode("ascii").strip()
    if not text.lstrip("-").isdigit():
        raise ValueError(f"cls is not an integer: {text[:20]!r}")
    return int(text)


def parse_meta(raw: bytes) -> tuple[int, int]:
    """(index, clean_label) from a `json` member."""
    meta = json.loads(raw)
    return int(meta["index"]), int(meta.get("clean_label", -1))


def parse_ids(sample: dict) -> tuple[int, int]:
    """(index, clean_label) from the fixed-width `ids` member when present (a few us), else
    from the `json` member (shards written by other tools)."""
    raw = sample.get("ids")
    if raw is not None and len(raw) == 3 * IDS_DTYPE.itemsize:
        _, index, clean = np.frombuffer(raw, dtype=IDS_DTYPE).tolist()
        return index, clean
    return parse_meta(sample["json"])


def image_member(sample: dict) -> tuple[str, bytes]:
    """The (ext, bytes) of a sample's image; KeyError when it has none."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext, sample[ext]
    raise KeyError("no jpg or png member")
