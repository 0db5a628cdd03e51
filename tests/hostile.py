"""Hostile shard sets made from good ones, for tests: each function damages one shard (or one
sample in it) in a copied shard folder and returns a `Damage` saying what a reader must report.

Damaged shards are rewritten with pipeline.convert.writer.write_tar, so their DALI index matches the
damaged tar, as it would for a shard written damaged at the source. Truncation and removal
leave the card, the manifest and the index as they were: the file was cut short or lost after
it was written (a network copy that stopped half way)."""
import random
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from pipeline.records import IMAGE_EXTS
from pipeline.tario import iter_tar
from pipeline.convert.writer import write_tar


@dataclass(frozen=True)
class Damage:
    shard: str          # file name of the shard
    key: str            # the damaged sample's key; "" when the shard as a whole is damaged
    kind: str           # one of KINDS, or truncated / empty / zero_bytes / missing
    reason: str         # a substring of the reader's skip reason

    def matches(self, record) -> bool:
        """Whether a (shard, key, reason) skip record reports this damage."""
        shard, key, reason = record[:3]
        return Path(shard).name == self.shard and key == self.key and self.reason in reason


def copy_set(good: Path, dest: Path) -> Path:
    """A copy of a shard folder to damage (the good one stays good for other tests)."""
    shutil.copytree(good, dest)
    return dest


def read_shard(path: Path) -> list[dict[str, bytes]]:
    """A shard's samples in order, each {member name: bytes} as records.encode_sample makes."""
    samples: list[dict[str, bytes]] = []
    last = None
    with open(path, "rb") as f:
        for name, data in iter_tar(f):
            key = name.split(".", 1)[0]
            if key != last:
                samples.append({})
                last = key
            samples[-1][name] = data
    return samples


def key_of(sample: dict) -> str:
    return next(iter(sample)).split(".", 1)[0]


def _image_name(sample: dict) -> str:
    return next(n for n in sample if n.rsplit(".", 1)[-1] in IMAGE_EXTS)


def _garbage_image(s, k):
    s[_image_name(s)] = random.Random(k).randbytes(700)


def _zero_byte_image(s, k):
    s[_image_name(s)] = b""


def _cut_image(s, k):                # a PNG/JPEG whose data stops half way
    name = _image_name(s)
    s[name] = s[name][: len(s[name]) // 2]


def _broken_png_chunk(s, k):        # PIL raises SyntaxError("broken PNG file") on this one
    name = _image_name(s)
    png = s[name]
    assert name.endswith(".png"), "broken_png_chunk needs a PNG sample"
    i = png.index(b"IDAT") - 4
    n = struct.unpack(">I", png[i:i + 4])[0]
    data, half = png[i + 8:i + 8 + n], n // 2

    def chunk(kind, d):
        return struct.pack(">I", len(d)) + kind + d + struct.pack(">I", zlib.crc32(kind + d))
    s[name] = png[:i] + chunk(b"IDAT", data[:half]) + chunk(b"\x01\x02\x03\x04", data[half:]) + png[i + 12 + n:]


def _no_cls(s, k):
    del s[f"{k}.cls"]


def _no_image(s, k):
    del s[_image_name(s)]


def _text_cls(s, k):
    s[f"{k}.cls"] = b"seven"


def _out_of_range_cls(s, k, n_classes=10):
    s[f"{k}.cls"] = str(n_classes + 3).encode()


def _negative_cls(s, k):
    s[f"{k}.cls"] = b"-1"


# kind -> (damage in place, a substring of the CPU backend's skip reason)
KINDS = {
    "garbage_image": (_garbage_image, "bad image"),
    "zero_byte_image": (_zero_byte_image, "bad image"),
    "cut_image": (_cut_image, "bad image"),
    "broken_png_chunk": (_broken_png_chunk, "bad image: SyntaxError"),
    "no_cls": (_no_cls, "KeyError: 'cls'"),
    "no_image": (_no_image, "no jpg or png member"),
    "text_cls": (_text_cls, "cls is not an integer"),
    "out_of_range_cls": (_out_of_range_cls, "outside [0, 10)"),
    "negative_cls": (_negative_cls, "label -1 outside"),
}
UNDECODABLE = {"garbage_image", "zero_byte_image", "cut_image", "broken_png_chunk"}   # DALI cannot skip these


def damage_samples(folder: Path, shard: str, plan: dict[int, str]) -> list[Damage]:
    """Damage samples of one shard in place: plan = {sample position: kind}."""
    path = Path(folder) / shard
    samples = read_shard(path)
    out = []
    for i, kind in sorted(plan.items()):
        k = key_of(samples[i])
        fn, reason = KINDS[kind]
        fn(samples[i], k)
        out.append(Damage(shard, k, kind, reason))
    write_tar(path, samples)
    return out


def duplicate(folder: Path, shard: str, i: int, adjacent: bool = False) -> Damage:
    """A second copy of sample i: right after it, or at the end of the shard."""
    path = Path(folder) / shard
    samples = read_shard(path)
    copy = dict(samples[i])
    samples.insert(i + 1, copy) if adjacent else samples.append(copy)
    write_tar(path, samples)
    return Damage(shard, key_of(copy), "duplicate", "duplicate key")


def truncate(folder: Path, shard: str, at_sample: int) -> Damage:
    """Cut the tar inside sample `at_sample`'s image data (a 512-byte block boundary is not
    needed: the cut lands mid-member). `at_sample` samples stay whole."""
    path = Path(folder) / shard
    offset = 0
    with open(path, "rb") as f:
        raw = f.read()
    # member data offsets from the tar itself: header, then data padded to 512
    pos, n_seen, last = 0, -1, None
    while pos + 512 <= len(raw) and raw[pos:pos + 512].strip(b"\0"):
        name = raw[pos:pos + 100].rstrip(b"\0").decode()
        size = int(raw[pos + 124:pos + 136].rstrip(b"\0 ").strip() or b"0", 8)
        key = name.split(".", 1)[0]
        if key != last:
            n_seen, last = n_seen + 1, key
        if n_seen == at_sample and name.rsplit(".", 1)[-1] in IMAGE_EXTS:
            offset = pos + 512 + max(1, size // 2)
            break
        pos += 512 + (size + 511) // 512 * 512
    assert offset, f"{shard} has no sample {at_sample} with an image"
    path.write_bytes(raw[:offset])
    return Damage(shard, "", "truncated", f"after {at_sample} samples")


def empty(folder: Path, shard: str, zero_bytes: bool = False) -> Damage:
    """The shard's samples are gone: a valid tar with no member, or a zero-byte file. Its DALI
    index is rewritten for the valid empty tar (a re-run writer), kept for the zero-byte file."""
    path = Path(folder) / shard
    if zero_bytes:
        path.write_bytes(b"")
        return Damage(shard, "", "zero_bytes", "after 0 samples")
    write_tar(path, [])
    return Damage(shard, "", "empty", "after 0 samples")


def remove(folder: Path, shard: str) -> Damage:
    """The shard vanished after the card listed it."""
    (Path(folder) / shard).unlink()
    return Damage(shard, "", "missing", "after 0 samples")


# ---------------------------------------------------------------- metadata, sizes, repeats
# Separate from KINDS: test_hostile runs every KIND through both backends with one reason.
def set_meta(folder: Path, shard: str, i: int, index=None, drop_ids: bool = False,
             json_index="keep") -> str:
    """Rewrite sample i's index: in `ids` (when `index` is given) and in `json` (when
    `json_index` is not "keep"; None writes null). `drop_ids` leaves only the json member,
    as shards written by other tools have. -> the sample's key."""
    import json
    import numpy as np
    path = Path(folder) / shard
    samples = read_shard(path)
    s, k = samples[i], key_of(samples[i])
    if index is not None:
        ids = np.frombuffer(s[f"{k}.ids"], dtype="<i8").copy()
        ids[1] = index
        s[f"{k}.ids"] = ids.tobytes()
    if json_index != "keep":
        meta = json.loads(s[f"{k}.json"])
        meta["index"] = json_index
        s[f"{k}.json"] = json.dumps(meta).encode()
    if drop_ids:
        del s[f"{k}.ids"]
    write_tar(path, samples)
    return k


def replace_image(folder: Path, shard: str, i: int, data: bytes) -> str:
    """Sample i's image bytes replaced (the member keeps its name). -> the sample's key."""
    path = Path(folder) / shard
    samples = read_shard(path)
    samples[i][_image_name(samples[i])] = data
    write_tar(path, samples)
    return key_of(samples[i])


def repeat_in(folder: Path, src: str, i: int, dst: str) -> str:
    """A copy of sample i of shard `src` appended to shard `dst` (same key, same index).
    -> the key."""
    sample = read_shard(Path(folder) / src)[i]
    path = Path(folder) / dst
    write_tar(path, read_shard(path) + [dict(sample)])
    return key_of(sample)


def declare_huge(folder: Path, shard: str, i: int, size: int = 2**40) -> str:
    """Sample i's image header claims `size` bytes (GNU base-256, as tar writes sizes of
    8 GiB and more), checksum fixed: what a reader sees is a valid header of a huge member.
    The DALI index is left as written. -> the key."""
    path = Path(folder) / shard
    raw = bytearray(path.read_bytes())
    pos, n, last = 0, -1, None
    while raw[pos:pos + 512].strip(b"\0"):
        name = raw[pos:pos + 100].rstrip(b"\0").decode()
        key = name.split(".", 1)[0]
        if key != last:
            n, last = n + 1, key
        length = int(bytes(raw[pos + 124:pos + 136]).rstrip(b"\0 ").strip() or b"0", 8)
        if n == i and name.rsplit(".", 1)[-1] in IMAGE_EXTS:
            raw[pos + 124:pos + 136] = b"\x80" + size.to_bytes(11, "big")
            raw[pos + 148:pos + 156] = b" " * 8
            raw[pos + 148:pos + 156] = b"%06o\0 " % sum(raw[pos:pos + 512])
            path.write_bytes(bytes(raw))
            return key
        pos += 512 + (length + 511) // 512 * 512
    raise AssertionError(f"{shard} has no sample {i}")
