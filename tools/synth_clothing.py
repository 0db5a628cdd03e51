"""A Clothing1M-shaped synthetic source, in Clothing1M's own layout (docs/architecture.md section 5).

    python tools/synth_clothing.py OUT --n N [--seed S] [--workers K] [--size MIN:MAX] [--annotations]

Writes OUT/images/D/DD/NNNNNNNN.jpg (N JPEGs, MIN-MAX px a side) and Clothing1M's text files
(noisy_label_kv.txt, clean_label_kv.txt, the clean_train/clean_val/clean_test and noisy_train
key lists, category_names_eng.txt) at OUT or, with --annotations, under OUT/annotations/.
Convert it with `python tools/make_shards.py clothing1m OUT --out SHARDS --name c1m`.

Each image shows its true class as a visual pattern a small CNN can learn: a grating whose
orientation and frequency are set by the class, inside a randomly placed and scaled blob, with
random colours, background, phase, jitter and pixel noise. About 38% of the noisy labels are
wrong, most of them within confusable pairs (Knitwear/Sweater, Jacket/Windbreaker,
Shirt/T-Shirt, ...), as in Clothing1M. Clean labels exist for a subset split like Clothing1M's
clean train/val/test lists; part of the clean train set is also in the noisy train set, so the
train shards carry a clean label for some samples.

Everything is a function of (seed, image index), never of the worker or the clock, so the
output is byte-identical for any --workers. Every file is written under a temporary name and
renamed when complete; a rerun after a kill skips the complete images and writes the rest."""
import argparse
import io
import json
import os
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline import safe_io

CLASSES = ["T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
           "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear"]
K = len(CLASSES)

# Clothing1M's counts (docs/architecture.md section 5): 1,037,497 images, 1M noisy train, clean lists of
# 47,570 / 14,313 / 10,526; 1,072,409 - 1,037,497 = 34,912 images carry both labels (all of
# them taken here from the clean train list, so val/test never overlap the train shards:
# make_shards refuses a key that appears in two splits).
C1M_TOTAL, C1M_CLEAN_TRAIN, C1M_VAL, C1M_TEST, C1M_BOTH = 1_037_497, 47_570, 14_313, 10_526, 34_912
MIN_EVAL = 500           # val/test at least this many (or N/10) so accuracy is measurable at small N

# Per-class flip rates, mean 0.38 (classes are equally likely, so the expected noise is 0.38);
# the pairs below take most of each class's flips, the rest spread over all other classes.
FLIP = np.array([0.45, 0.42, 0.48, 0.35, 0.50, 0.40, 0.42, 0.45, 0.35, 0.30, 0.25, 0.32, 0.33, 0.30])
STRONG = [("Knitwear", "Sweater"), ("Jacket", "Windbreaker"), ("Shirt", "T-Shirt")]
MEDIUM = [("Chiffon", "Dress"), ("Jacket", "Downcoat"), ("Hoodie", "Sweater"), ("Suit", "Vest")]
BLOCK = 1 << 16          # labels are drawn per block of indexes, so index i's labels never depend on N

ROLE_NOISY, ROLE_BOTH, ROLE_CLEAN_TRAIN, ROLE_VAL, ROLE_TEST = range(5)


def transition() -> np.ndarray:
    """T[true, noisy]: rows sum to 1, diagonal 1 - FLIP."""
    w = np.ones((K, K))
    for pairs, weight in ((STRONG, 30.0), (MEDIUM, 8.0)):
        for a, b in pairs:
            i, j = CLASSES.index(a), CLASSES.index(b)
            w[i, j] = w[j, i] = weight
    np.fill_diagonal(w, 0.0)
    t = FLIP[:, None] * w / w.sum(1, keepdims=True)
    np.fill_diagonal(t, 1.0 - FLIP)
    return t


def split_counts(n: int) -> dict[str, int]:
    """Clothing1M's proportions; val/test raised to min(500, N/10) so small N can be evaluated."""
    eval_floor = min(MIN_EVAL, n // 10)
    val = max(round(n * C1M_VAL / C1M_TOTAL), eval_floor)
    test = max(round(n * C1M_TEST / C1M_TOTAL), eval_floor)
    clean_train = round(n * C1M_CLEAN_TRAIN / C1M_TOTAL)
    both = round(clean_train * C1M_BOTH / C1M_CLEAN_TRAIN)
    return {"val": val, "test": test, "both": both, "clean_train_only": clean_train - both,
            "noisy_only": n - val - test - clean_train}


def label_tables(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """The labels alone, no pixels: true class, noisy label and role (ROLE_*) per index, uint8.
    A role is a place in Clothing1M's lists; the noisy label is used where the role has one."""
    t_cum = transition().cumsum(1)
    true = np.empty(n, np.uint8)
    noisy = np.empty(n, np.uint8)
    for b in range(0, n, BLOCK):
        rng = np.random.default_rng([seed, 7, b // BLOCK])
        y = rng.integers(0, K, BLOCK)           # always a full block: labels independent of N
        u = rng.random(BLOCK)
        z = np.minimum((u[:, None] > t_cum[y]).sum(1), K - 1)
        m = min(BLOCK, n - b)
        true[b:b + m], noisy[b:b + m] = y[:m], z[:m]
    c = split_counts(n)
    perm = np.random.default_rng([seed, 2]).permutation(n)
    role = np.full(n, ROLE_NOISY, np.uint8)
    start = 0
    for r, count in ((ROLE_VAL, c["val"]), (ROLE_TEST, c["test"]),
                     (ROLE_CLEAN_TRAIN, c["clean_train_only"]), (ROLE_BOTH, c["both"])):
        role[perm[start:start + count]] = r
        start += count
    return {"true": true, "noisy": noisy, "role": role}


def rel_path(i: int) -> str:
    """Clothing1M nests images two levels deep, 10 x 100 folders: images/3/47/...jpg."""
    return f"images/{i % 10}/{(i // 10) % 100:02d}/{i:08d}.jpg"


# -- pixels -------------------------------------------------------------------------------

def render(seed: int, index: int, cls: int, size: tuple[int, int]) -> np.ndarray:
    """One HxWx3 uint8 image of class `cls`. The class fixes the grating's orientation (7
    angles) and frequency band (2); everything else is nuisance drawn from (seed, index)."""
    rng = np.random.default_rng([seed, 1, index])
    w, h = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
    theta = np.pi * (cls % 7) / 7 + rng.normal(0, 0.05)
    cycles = (2.0 if cls < 7 else 4.5) * rng.uniform(0.9, 1.1)      # per blob diameter
    cx, cy = rng.uniform(0.3, 0.7, 2)
    radius = rng.uniform(0.3, 0.5)
    aspect = rng.uniform(0.75, 1.33)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    s = float(min(w, h))
    u, v = (xx - cx * w) / s, (yy - cy * h) / s
    along = u * np.cos(theta) + v * np.sin(theta)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * cycles / (2 * radius) * along + rng.uniform(0, 2 * np.pi))
    blob = ((u / (radius * aspect)) ** 2 + (v * aspect / radius) ** 2 <= 1.0).astype(np.float32)
    hue, bg0, bg1 = rng.uniform(0, 255, (3, 3)).astype(np.float32)
    c1, c2 = hue * 0.45, np.minimum(hue * 0.45 + 140, 255)          # stripes always contrast
    ramp = (xx / w)[..., None]                                        # smooth background
    img = bg0 * (1 - ramp) + bg1 * ramp
    fg = c1 * wave[..., None] + c2 * (1 - wave[..., None])
    img = img * (1 - blob[..., None]) + fg * blob[..., None]
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def is_complete(path: Path) -> bool:
    """Written by this tool means complete (rename after write); the end-of-image marker also
    catches a file truncated by something else."""
    try:
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            return f.read(2) == b"\xff\xd9"
    except OSError:
        return False


def write_atomic(path: Path, data: bytes) -> None:
    """A fresh temporary name, then a rename (pipeline/safe_io.py: never a fixed name that a
    link planted in a shared --out could redirect); what a killed run left is removed by
    remove_stale on the rerun. Not fsynced: a rerun checks every image (is_complete)."""
    safe_io.write_bytes(path, data, durable=False)


def remove_stale(folder: Path) -> None:
    """The temporary files and folders (safe_io's `.NAME.*.tmp`) a killed run left in `folder`."""
    for p in folder.glob(".*.tmp"):
        safe_io.remove(p, missing_ok=True)


def write_chunk(task: tuple) -> tuple[int, int]:
    """Images [start, start + len(classes)): -> (written, skipped as already complete)."""
    out, seed, size, start, classes = task
    written = 0
    for off, cls in enumerate(classes):
        i = start + off
        path = Path(out) / rel_path(i)
        if is_complete(path):
            continue
        write_atomic(path, jpeg_bytes(render(seed, i, int(cls), size)))
        written += 1
    return written, len(classes) - written


def make_folders(out: Path) -> None:
    for a in range(10):
        for b in range(100):
            folder = out / "images" / str(a) / f"{b:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale(folder)


def write_images(out: Path, true: np.ndarray, seed: int, size: tuple[int, int], workers: int,
                 chunk: int = 256) -> tuple[int, int]:
    make_folders(out)
    n = len(true)
    tasks = ((str(out), seed, size, s, true[s:s + chunk].tobytes()) for s in range(0, n, chunk))
    written = skipped = 0
    bar = tqdm(total=n, unit="img", desc="synth_clothing", disable=None, mininterval=1.0)
    pool = Pool(workers) if workers > 1 else None
    try:
        # imap keeps the chunks in order and pulls tasks lazily through a bounded pipe
        for w, s in (pool.imap(write_chunk, tasks) if pool else map(write_chunk, tasks)):
            written, skipped = written + w, skipped + s
            bar.update(w + s)
    finally:
        if pool:
            pool.terminate()
            pool.join()
        bar.close()
    return written, skipped


# -- text files ---------------------------------------------------------------------------

def write_lines_atomic(path: Path, lines) -> None:
    """Streams an iterable of lines (no list of N strings) to a fresh temporary file, then
    renames (safe_io.temp_path)."""
    with safe_io.temp_path(path) as tmp, open(tmp, "w", buffering=1 << 20) as f:
        for line in lines:
            f.write(line)


def _select(role: np.ndarray, roles: tuple[int, ...]):
    """Indexes with one of `roles`, in index order, one block at a time."""
    for b in range(0, len(role), BLOCK):
        for i in np.flatnonzero(np.isin(role[b:b + BLOCK], roles)):
            yield b + int(i)


def write_text_files(root: Path, tables: dict[str, np.ndarray]) -> None:
    role, noisy, true = tables["role"], tables["noisy"], tables["true"]
    safe_io.out_dir(root, "the annotations folder")
    remove_stale(root)
    noisy_roles, clean_roles = (ROLE_NOISY, ROLE_BOTH), (ROLE_BOTH, ROLE_CLEAN_TRAIN, ROLE_VAL, ROLE_TEST)
    write_lines_atomic(root / "category_names_eng.txt", (c + "\n" for c in CLASSES))
    write_lines_atomic(root / "noisy_label_kv.txt",
                       (f"{rel_path(i)} {noisy[i]}\n" for i in _select(role, noisy_roles)))
    write_lines_atomic(root / "clean_label_kv.txt",
                       (f"{rel_path(i)} {true[i]}\n" for i in _select(role, clean_roles)))
    lists = {"noisy_train_key_list.txt": noisy_roles, "clean_train_key_list.txt": (ROLE_BOTH, ROLE_CLEAN_TRAIN),
             "clean_val_key_list.txt": (ROLE_VAL,), "clean_test_key_list.txt": (ROLE_TEST,)}
    for name, roles in lists.items():
        write_lines_atomic(root / name, (rel_path(i) + "\n" for i in _select(role, roles)))


# -- command line -------------------------------------------------------------------------

def check_stamp(out: Path, stamp: dict) -> None:
    """A rerun must ask for the same data, or skipping 'complete' images would mix two sets."""
    path = out / ".synth_clothing.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old != stamp:
            raise ValueError(f"{out} holds a source made with {old}, not {stamp}; use another OUT or delete it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_lines_atomic(path, [json.dumps(stamp, sort_keys=True) + "\n"])


def parse_size(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size wants MIN:MAX, got {text!r}") from None
    if not 8 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"--size needs 8 <= MIN <= MAX, got {text!r}")
    return lo, hi


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="output folder (the Clothing1M root)")
    p.add_argument("--n", type=int, required=True, help="number of images (>= 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="processes (the output does not depend on it)")
    p.add_argument("--size", type=parse_size, default=(48, 96), help="MIN:MAX pixels of each side")
    p.add_argument("--annotations", action="store_true", help="txt files under OUT/annotations/")
    args = p.parse_args(argv)
    if args.n < 20:
        p.error("--n must be >= 20")
    if args.workers < 1:
        p.error("--workers must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    stamp = {"n": args.n, "seed": args.seed, "size": list(args.size), "annotations": args.annotations}
    try:
        safe_io.out_dir(args.out)                  # a link at OUT is refused
        remove_stale(args.out)
        check_stamp(args.out, stamp)
    except (ValueError, OSError) as e:
        print(f"synth_clothing: error: {e}", file=sys.stderr)
        return 2
    tables = label_tables(args.n, args.seed)
    written, skipped = write_images(args.out, tables["true"], args.seed, args.size, args.workers)
    # text files last: a source whose lists exist has all its images
    write_text_files(args.out / "annotations" if args.annotations else args.out, tables)
    train = np.isin(tables["role"], (ROLE_NOISY, ROLE_BOTH))
    wrong = float((tables["noisy"][train] != tables["true"][train]).mean())
    c = split_counts(args.n)
    print(f"wrote {args.out}: {args.n} images ({written} new, {skipped} already there); noisy train "
          f"{c['noisy_only'] + c['both']} ({wrong:.1%} wrong), clean train {c['both'] + c['clean_train_only']} "
          f"({c['both']} also noisy), val {c['val']}, test {c['test']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
