"""Clothing1M-like JPEGs for benchmarks: ~500x500, smooth colour fields, hard edges and fine
texture (pure noise would make JPEG decode unrealistically slow, flat colour too fast).

    python tools/synth_images.py OUT_DIR --count 2000 [--classes 14] [--size 500] [--seed 0]

Writes an ImageFolder tree OUT_DIR/class_XX/NNNNNN.jpg."""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def synth_image(rng: np.random.Generator, size: int = 500) -> Image.Image:
    w = int(size * rng.uniform(0.8, 1.2))
    h = int(size * rng.uniform(0.8, 1.2))
    field = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)             # smooth colour field
    img = Image.fromarray(field).resize((w, h), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):                             # edges: shapes
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (x0, y0, x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    texture = rng.normal(0, 6, (h, w, 1)).astype(np.float32)           # fabric-like grain
    arr = np.asarray(img.filter(ImageFilter.GaussianBlur(1)), dtype=np.float32) + texture
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8))


def write_tree(out: Path, count: int, classes: int = 14, size: int = 500, seed: int = 0, quality: int = 90) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = out / f"class_{i % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        synth_image(rng, size).save(folder / f"{i:06d}.jpg", quality=quality)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--classes", type=int, default=14)
    p.add_argument("--size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    write_tree(args.out, args.count, args.classes, args.size, args.seed)
    sizes = [f.stat().st_size for f in args.out.rglob("*.jpg")]
    print(f"wrote {len(sizes)} JPEGs to {args.out}, mean {np.mean(sizes) / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
