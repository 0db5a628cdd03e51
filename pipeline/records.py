"""The sample layout shared by the shard writer and both readers (docs/architecture.md section 4).

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
import struct
import unicodedata

import numpy as np
from PIL import Image

IMAGE_EXTS = ("jpg", "png")
IDS_DTYPE = np.dtype("<i8")
# Images above this many pixels (8192 x 8192) are refused by make_shards (or downscaled with
# --resize) and skipped by both readers before decoding: a 12000 x 12000 PNG of 0.45 MB cost
# 4.2 s and 2.1 GB per decode, every epoch. PIL's own bomb check only warns below 2 x 89.5 M.
MAX_PIXELS = 8192 * 8192
_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# PIL modes of more than 8 bits per channel that it converts to "L" or "RGB" by clipping (a
# 16-bit grey ramp came out white): to_8bit rescales them instead
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# ustar holds 100 bytes of member name (KEY.json: the key + 5) and keys hold no '/' to split
# at: a longer key (34 CJK characters are 102 bytes) ends in 'h' + 16 hex digits of its SHA-1
MAX_KEY_BYTES = 90
_KEY_UNSAFE = re.compile(r"[^\w-]+")     # str patterns: \w is any Unicode letter, digit or _


def make_key(text: str) -> str:
    """A tar-safe key from a source path: no dots (webdataset splits the extension at the
    first dot), no slashes; 'images/0/00/x.jpg' -> 'images_0_00_x', '猫/写真.jpg' -> '猫_写真'.
    Unicode is NFC-normalised first, so a name typed on macOS (decomposed) and on Linux gives
    one key. A name with no letter or digit left gets 'h' + 16 hex digits of its SHA-1; one
    longer than MAX_KEY_BYTES is cut and ends in them."""
    text = unicodedata.normalize("NFC", text)
    stem = text.rsplit(".", 1)[0] if "." in text.rsplit("/", 1)[-1] else text
    key = _KEY_UNSAFE.sub("_", stem).strip("_")
    digest = "h" + hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    if len(key.encode()) > MAX_KEY_BYTES:       # cut on a character, then the digest
        key = key.encode()[:MAX_KEY_BYTES - len(digest) - 1].decode("utf-8", "ignore") + "_" + digest
    return key or digest


def image_header(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, bits per channel) from a PNG's IHDR or a JPEG's SOF segment, without
    decoding (a few us); None for any other format, or a header this does not understand."""
    if data[:8] == _PNG and data[12:16] == b"IHDR" and len(data) >= 25:
        w, h = struct.unpack(">II", data[16:24])
        return w, h, data[24]
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data) and data[i] == 0xFF:
        marker = data[i + 1]
        if marker == 0xFF:                          # fill byte before a marker
            i += 1
        elif marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return (w, h, data[i + 4]) if h else None   # h == 0: the height comes later (DNL)
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    return None


def pixel_problem(w: int, h: int) -> str | None:
    """Why an image of w x h may not be decoded, or None."""
    if w * h > MAX_PIXELS:
        return f"{w}x{h} = {w * h} pixels, above the limit of {MAX_PIXELS} (8192 x 8192)"
    return None


def to_8bit(img: Image.Image) -> Image.Image:
    """A 16-bit (or 32-bit integer) greyscale image as 8-bit "L", rescaled: v * 255 / 65535,
    rounded (values above 65535 are clipped). Other modes are returned as they are."""
    if img.mode not in WIDE_MODES:
        return img
    arr = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
    return Image.fromarray(((arr * 255 + 32767) // 65535).astype(np.uint8), "L")


def split_member(name: str) -> tuple[str, str]:
    """A tar member name -> (sample key, extension), webdataset's rule: the extension starts
    at the first dot of the base name; folders stay part of the key."""
    prefix, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{prefix}/{key}" if prefix else key), ext


def label_in_range(label: int, n_classes: int) -> int:
    """The label, or ValueError when it is no class (one message for every reader and verify)."""
    if not 0 <= label < n_classes:
        raise ValueError(f"label {label} outside [0, {n_classes})")
    return label


def error_text(e: Exception) -> str:
    """An exception's message, one line, without the buffer address PIL puts in it (which
    would make two runs' skip records differ)."""
    return " ".join(str(e).split(" <_io.BytesIO object at")[0].split())


def find_images(shard_dir, wanted: dict):
    """(shard, key, image bytes) for the wanted {shard name: keys}, each shard read once, its
    other members seeked past (pipeline.tario). `shard_dir` is where the card's shards are: a
    local folder, or the bucket folder of a card fetched from a bucket (an `s3://`/`gs://`
    URL, pipeline.bucket_cards.shard_folder; its cache holds no shard), read through fsspec as
    the loaders read it, never a shell. Shards are names beside their card, never paths (a
    manifest may come from a stranger); a moved or damaged shard gives what it has."""
    from pathlib import Path

    from pipeline import remote
    from pipeline.tario import iter_tar
    in_bucket = remote.is_object_url(shard_dir)
    for shard, keys in wanted.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            continue
        left = set(keys)
        try:
            with (remote.open_url(remote.join(shard_dir, shard)) if in_bucket
                  else open(Path(shard_dir) / shard, "rb", buffering=0)) as f:
                for name, data in iter_tar(f, lambda n: split_member(n)[0] in left):
                    key, ext = split_member(name)
                    if ext in IMAGE_EXTS and key in left:
                        left.discard(key)
                        yield shard, key, data
                        if not left:
                            break
        except (OSError, ValueError, EOFError):
            continue


def group_members(members, errors: tuple, split_repeats: bool = False):
    """Tar members (name, data) -> (key, [(ext, data), ...]) per run of members sharing a
    key, in tar order: the one grouping rule of the CPU reader and verify_shards. With
    `split_repeats`, a member the run already has starts a new run (the next copy of a sample
    written twice, as webdataset groups them). When the tar breaks (one of `errors`), the run
    read whole so far is given out first, then the error is raised."""
    key_now, group, exts = None, [], set()
    members = iter(members)
    while True:
        try:
            name, data = next(members)
        except StopIteration:
            break
        except errors:
            if group:
                yield key_now, group
            raise
        key, ext = split_member(name)
        if group and (key != key_now or (split_repeats and ext in exts)):
            yield key_now, group
            group, exts = [], set()
        key_now = key
        group.append((ext, data))
        exts.add(ext)
    if group:
        yield key_now, group


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
    """(index, clean_label) from a `json` member; ValueError when it is not an object with
    integer values there (null, "3", 3.5 and true are refused: int() would crash or guess)."""
    try:
        meta = json.loads(raw)
    except RecursionError:                  # "[[[[..." nested thousands deep
        raise ValueError("json member nested too deep") from None
    if not isinstance(meta, dict):
        raise ValueError(f"json member is a {type(meta).__name__}, not an object")
    if "index" not in meta:
        raise KeyError("index")
    return _json_int(meta, "index"), _json_int(meta, "clean_label", -1)


def _json_int(meta: dict, name: str, default: int | None = None) -> int:
    v = meta.get(name, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"json {name} is {str(v)[:20]!r}, not an integer")
    return v


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
