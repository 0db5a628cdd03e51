"""Helpers for the make_shards tests: run the tool, read its output back the way users will
(stock webdataset, `tar -tf`, DALI's wds2idx, card and manifest), and build a Clothing1M tree."""

import io
import json
import re
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from conftest import make_image
from tools import make_shards

MANIFEST_COLUMNS = ["key", "split", "shard", "index", "label", "clean_label", "source"]
SAMPLE_FIELDS = {"jpg", "png", "cls", "json", "ids"}   # ids: the optional fixed-width extra
CLOTHING1M_CLASSES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
                      "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]


# ---------------------------------------------------------------------------- helpers

def run(argv, capsys) -> tuple[int, str, str]:
    rc = make_shards.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_one_line_error(rc, err, *needles):
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("make_shards: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


def tar_members(tar: Path) -> list[str]:
    r = subprocess.run(["tar", "-tf", str(tar)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr, r.stderr
    return r.stdout.split("\n")[:-1]


def reference_idx(tar: Path, tmp: Path) -> str:
    """The index DALI's own tool writes for `tar` (wds2idx ships with nvidia-dali); without
    the dali extra, the same format from GNU tar's listing (header block numbers and sizes),
    so the check never compares pipeline/convert/writer.py with a copy of itself. A member's data
    starts one block after its header (the shards' names fit the ustar header: no long-name
    records in between)."""
    try:
        from wds2idx import IndexCreator
    except ImportError:
        r = subprocess.run(["tar", "--block-number", "--quoting-style=literal", "-tvf", str(tar)],
                           capture_output=True, text=True, check=True)
        groups, last = [], None
        for line in r.stdout.splitlines():
            block, rest = line.removeprefix("block ").split(": ", 1)
            if rest.startswith("**"):                    # "** Block of NULs **", "** End of File **"
                continue
            fields = rest.split(None, 5)                 # mode owner size date time name
            size, name = int(fields[2]), fields[5]
            base, ext = Path(name).name.split(".", 1)
            if base != last:
                groups.append([])
                last = base
            groups[-1].append(f"{ext} {(int(block) + 1) * 512} {size} {name}")
        return f"v1.2 {len(groups)}\n" + "".join(" ".join(g) + "\n" for g in groups)
    path = tmp / (tar.stem + ".ref.idx")
    with IndexCreator(str(tar), str(path), verbose=False) as ic:
        ic.create_index()
    return path.read_text()


def read_back(out: Path, name: str, tmp: Path) -> dict:
    """Check one output set against the contract (docs/architecture.md section 4) and return
    {"card", "rows", split: [sample dicts in shard order]}."""
    card = json.loads((out / f"{name}.json").read_text())
    table = pq.read_table(out / f"{name}.parquet")
    assert table.column_names == MANIFEST_COLUMNS
    rows = table.to_pylist()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    listed = []
    result = {"card": card, "rows": rows}
    for split, info in card["splits"].items():
        prefix = name if split == "train" else f"{name}-{split}"
        files = [s["file"] for s in info["shards"]]
        assert files == [f"{prefix}-{i:03d}.tar" for i in range(len(files))]
        listed += files
        samples = []
        for shard in info["shards"]:
            tar = out / shard["file"]
            members = tar_members(tar)
            # each sample's members are contiguous and share a key without dots
            groups: list[tuple[str, list[str]]] = []
            for m in members:
                key, ext = m.split(".", 1)
                if not groups or groups[-1][0] != key:
                    groups.append((key, []))
                groups[-1][1].append(ext)
            assert len({k for k, _ in groups}) == len(groups) == shard["count"] > 0
            # the DALI index beside the tar is exactly what wds2idx writes
            assert (out / f"{tar.stem}.idx").read_text() == reference_idx(tar, tmp)
            raw = list(wds.WebDataset([str(tar)], shardshuffle=False))
            assert [s["__key__"] for s in raw] == [k for k, _ in groups]
            for s, (key, exts) in zip(raw, groups):
                fields = {k for k in s if not k.startswith("__")}
                assert fields == set(exts) and fields <= SAMPLE_FIELDS
                assert "." not in key and "/" not in key
                images = fields & {"jpg", "png"}
                assert len(images) == 1 and {"cls", "json"} <= fields
                ext = images.pop()
                assert re.fullmatch(rb"-?\d+", s["cls"])
                meta = json.loads(s["json"])
                assert isinstance(meta["index"], int) and isinstance(meta["clean_label"], int)
                img = Image.open(io.BytesIO(s[ext]))
                assert img.format == {"jpg": "JPEG", "png": "PNG"}[ext]
                samples.append({"key": key, "ext": ext, "data": s[ext], "cls": int(s["cls"]),
                                "clean": meta["clean_label"], "index": meta["index"],
                                "source": meta.get("source", ""), "shard": shard["file"], "split": split})
        assert len(samples) == info["count"]
        # stock webdataset's decoders agree, over the whole split at once
        urls = [str(out / f) for f in files]
        dec = list(wds.WebDataset(urls, shardshuffle=False).decode("pil"))
        assert [d["__key__"] for d in dec] == [s["key"] for s in samples]
        for d, s in zip(dec, samples):
            assert d["cls"] == s["cls"] and d["json"]["index"] == s["index"]
            assert d["json"]["clean_label"] == s["clean"]
            assert isinstance(d[s["ext"]], Image.Image)
            s["image"] = d[s["ext"]]
        result[split] = samples
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(listed)
    assert sorted(p.name for p in out.glob("*.idx")) == sorted(f[:-4] + ".idx" for f in listed)
    everything = [s for split in card["splits"] for s in result[split]]
    indices = [s["index"] for s in everything]
    assert len(set(indices)) == len(indices)
    assert all(0 <= i < card["num_indices"] for i in indices)
    assert len({s["key"] for s in everything}) == len(everything)
    # the manifest is the tars, row for row
    assert [(r["key"], r["split"], r["shard"], r["index"], r["label"], r["clean_label"], r["source"])
            for r in rows] == [(s["key"], s["split"], s["shard"], s["index"], s["cls"], s["clean"], s["source"])
                               for s in everything]
    k = len(card["classes"])
    assert all(0 <= s["cls"] < k and -1 <= s["clean"] < k for s in everything)
    return result


# ---------------------------------------------------------------------------- Clothing1M

CLOTHING_SIZES = [(300, 400), (400, 300), (200, 150), (256, 320), (640, 256), (120, 500), (257, 900)]


def make_clothing1m(root: Path, annotations: bool, newline: str = "\n") -> dict:
    """A tiny Clothing1M in its real layout. Returns what the converter should produce."""
    rels = [f"images/{i % 10}/{(i * 37) % 100:02d}/{3761328114 + i * 7919},{905362226 + i}.jpg"
            for i in range(19)]
    rels[5] = "images/0/00/12345678.jpg"
    sizes = {}
    for i, rel in enumerate(rels):
        sizes[rel] = CLOTHING_SIZES[i % len(CLOTHING_SIZES)]
        make_image(root / rel, size=sizes[rel], seed=i)
    train, val, test, clean_only = rels[:10], rels[10:13], rels[13:16], rels[16:]
    noisy = {rel: (3 * i + 1) % 14 for i, rel in enumerate(train)}
    noisy["images/9/99/not_in_any_list.jpg"] = 2          # kv files list more than the key lists
    clean = {rel: (i * 5) % 14 for i, rel in enumerate(val + test + clean_only, start=1)}
    clean[train[0]] = (noisy[train[0]] + 1) % 14          # a noisy train image with a clean label too
    clean[train[3]] = noisy[train[3]]
    txt = root / "annotations" if annotations else root
    txt.mkdir(parents=True, exist_ok=True)

    def lines(items):
        return "".join(f"{x}{newline}" for x in items)
    (txt / "noisy_label_kv.txt").write_text(lines(f"{k} {v}" for k, v in noisy.items()))
    (txt / "clean_label_kv.txt").write_text(lines(f"{k} {v}" for k, v in clean.items()))
    (txt / "noisy_train_key_list.txt").write_text(lines(train))
    (txt / "clean_train_key_list.txt").write_text(lines(clean_only + [train[0], train[3]]))
    (txt / "clean_val_key_list.txt").write_text(lines(val))
    (txt / "clean_test_key_list.txt").write_text(lines(test))
    (txt / "category_names_eng.txt").write_text(lines(CLOTHING1M_CLASSES))
    return {"txt": txt, "sizes": sizes, "noisy": noisy, "clean": clean,
            "splits": {"train": train, "val": val, "test": test}, "clean_only": clean_only}
