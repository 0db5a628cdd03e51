"""One augmentation spec that both decode backends obey (the CPU ops live here, DALI's in
pipeline/dali.py). Train crops: `random_resized` (ImageNet-style), `random` (resize the
shorter side to `resize`, then a random `size` crop: the Clothing1M recipe), `pad_random`
(pad by `pad` then a random `size` crop: CIFAR) or `none` (digits). Eval: resize the shorter
side to `resize` (or `size`), center crop `size`."""
import io
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")   # skips PIL probing ~40 other formats
CROPS = ("random_resized", "random", "pad_random", "none")


@dataclass(frozen=True)
class AugSpec:
    size: int = 224                 # output side, pixels
    resize: int = 0                 # shorter side before cropping; 0 = size (eval) / untouched
    crop: str = "random_resized"    # one of CROPS, train only
    flip: bool = True               # random horizontal flip, train only (not for digits)
    scale: tuple[float, float] = (0.08, 1.0)   # random_resized area range (timm's default)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    pad: int = 4                    # pad_random
    channels: int = 3               # 1 = grayscale ("L"), 3 = RGB


def spec_from_card(card: dict, size: int = 0) -> AugSpec:
    """The dataset's recipe from its card; `size` (the --image-size flag) overrides."""
    aug = dict(card.get("augment", {}))
    for key in ("scale", "ratio"):
        if key in aug:
            aug[key] = tuple(aug[key])
    spec = AugSpec(channels=card.get("channels", 3), **aug)
    if size and size != spec.size:
        resize = round(spec.resize * size / spec.size) if spec.resize else 0
        spec = AugSpec(**{**spec.__dict__, "size": size, "resize": resize})
    return spec


def random_resized_box(w: int, h: int, spec: AugSpec, rng: random.Random) -> tuple[int, int, int, int]:
    """(left, top, width, height) with torchvision's RandomResizedCrop rule."""
    area = w * h
    log_r = (math.log(spec.ratio[0]), math.log(spec.ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*spec.scale)
        aspect = math.exp(rng.uniform(*log_r))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, w - cw), rng.randint(0, h - ch), cw, ch
    side = min(w, h)                                   # fallback: central square
    return (w - side) // 2, (h - side) // 2, side, side


def decode(data: bytes, spec: AugSpec, shrink_to: int = 0) -> Image.Image:
    """Decode to the spec's mode. For JPEGs, `draft` lets libjpeg decode at 1/2, 1/4 or 1/8
    scale directly (DCT-domain scaling), as long as the shorter side stays >= shrink_to:
    ~1.4x faster decodes when the crop is smaller than the image (design.md section 5)."""
    img = Image.open(io.BytesIO(data), formats=FORMATS)
    mode = "L" if spec.channels == 1 else "RGB"
    if shrink_to and img.format == "JPEG":
        w, h = img.size
        scale = min(w, h) / shrink_to
        if scale >= 2:
            img.draft(mode, (math.ceil(w / scale), math.ceil(h / scale)))
    img.load()
    return img if img.mode == mode else img.convert(mode)


def _resize_shorter(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    if min(w, h) == side:
        return img
    s = side / min(w, h)
    return img.resize((max(side, round(w * s)), max(side, round(h * s))), Image.BILINEAR)


def _crop(img: Image.Image, left: int, top: int, size: int) -> Image.Image:
    if img.size == (size, size):
        return img
    return img.crop((left, top, left + size, top + size))


def train_image(data: bytes, spec: AugSpec, rng: random.Random) -> np.ndarray:
    """Bytes -> augmented uint8 array (H, W, C)."""
    if spec.crop == "random_resized":
        img = Image.open(io.BytesIO(data))
        box = random_resized_box(*img.size, spec, rng)
        full_w = img.size[0]
        img = decode(data, spec, shrink_to=round(spec.size * min(img.size) / min(box[2:])))
        f = img.size[0] / full_w                       # draft may have decoded smaller
        l, t, w, h = (v * f for v in box)
        img = img.resize((spec.size, spec.size), Image.BILINEAR, box=(l, t, l + w, t + h))
    elif spec.crop == "random":
        img = _resize_shorter(decode(data, spec, shrink_to=spec.resize or spec.size), spec.resize or spec.size)
        w, h = img.size
        img = _crop(img, rng.randint(0, w - spec.size), rng.randint(0, h - spec.size), spec.size)
    elif spec.crop == "pad_random":
        arr = np.asarray(decode(data, spec))
        pad = ((spec.pad, spec.pad), (spec.pad, spec.pad)) + ((0, 0),) * (arr.ndim - 2)
        arr = np.pad(arr, pad)
        t, l = rng.randint(0, arr.shape[0] - spec.size), rng.randint(0, arr.shape[1] - spec.size)
        img = Image.fromarray(arr[t:t + spec.size, l:l + spec.size])
    else:
        img = eval_image_pil(data, spec)
    if spec.flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return _as_hwc(img)


def eval_image_pil(data: bytes, spec: AugSpec) -> Image.Image:
    side = spec.resize or spec.size
    img = _resize_shorter(decode(data, spec, shrink_to=side), side)
    w, h = img.size
    return _crop(img, (w - spec.size) // 2, (h - spec.size) // 2, spec.size)


def eval_image(data: bytes, spec: AugSpec) -> np.ndarray:
    return _as_hwc(eval_image_pil(data, spec))


def _as_hwc(img: Image.Image) -> np.ndarray:
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr
