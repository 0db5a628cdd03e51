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
import torch
import torch.nn.functional as F
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


MAX_SIDE = 2048                     # as train/config.py's image_size: a card may come from a stranger


def card_spec_problem(card: dict) -> str | None:
    """What is wrong with a card's `augment`, `channels` and `normalize` (read by every command
    that decodes), or None: known fields of their types, sides bounded, one finite mean and
    positive std per channel. A card without `normalize` is one line, not a KeyError. Checked
    where a dataset is resolved (pipeline.loader.resolve)."""
    aug, channels, norm = card.get("augment", {}), card.get("channels", 3), card.get("normalize")
    ints = ("size", "resize", "pad")
    if channels not in (1, 3) or isinstance(channels, bool):
        return "'channels' must be 1 or 3"
    if not isinstance(aug, dict) or set(aug) - set(AugSpec.__dataclass_fields__) - {"channels"}:
        return f"'augment' must be an object with the fields {', '.join(AugSpec.__dataclass_fields__)}"
    if not all(isinstance(aug[k], int) and not isinstance(aug[k], bool) and 0 <= aug[k] <= MAX_SIDE
               for k in ints if k in aug):
        return f"'augment' sizes ({', '.join(ints)}) must be integers in [0, {MAX_SIDE}]"
    if aug.get("crop", "none") not in CROPS or not isinstance(aug.get("flip", True), bool):
        return f"'augment.crop' must be one of {', '.join(CROPS)} and 'flip' true or false"
    for k in ("scale", "ratio"):
        v = aug.get(k, (1, 1))
        if not (isinstance(v, list | tuple) and len(v) == 2 and all(_finite(x) and x > 0 for x in v)):
            return f"'augment.{k}' must be two positive numbers"

    def stats(key, low):
        v = norm.get(key) if isinstance(norm, dict) else None
        return isinstance(v, list) and len(v) == channels and all(_finite(x) and x > low for x in v)
    if not (stats("mean", -math.inf) and stats("std", 0)):
        return f"'normalize' must hold 'mean' and 'std' with {channels} finite number(s) each (std > 0)"
    return None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def spec_from_card(card: dict, size: int = 0, override: str = "") -> AugSpec:
    """The dataset's recipe from its card; `size` (the --image-size flag) and `override`
    (the --augment flag, see train_crop_override) change it."""
    aug = dict(card.get("augment", {}))
    for key in ("scale", "ratio"):
        if key in aug:
            aug[key] = tuple(aug[key])
    spec = AugSpec(channels=card.get("channels", 3), **aug)
    if size and size != spec.size:
        resize = round(spec.resize * size / spec.size) if spec.resize else 0
        spec = AugSpec(**{**spec.__dict__, "size": size, "resize": resize})
    return train_crop_override(spec, override)


def train_crop_override(spec: AugSpec, override: str) -> AugSpec:
    """--augment: "" or "card" keeps the card's train crop; "none" turns it off; "pad:N" pads
    every side by N pixels (zeros) and takes a random `size` crop, i.e. a random translation of
    up to N pixels each way: the light digits augmentation that makes memorizing noisy labels
    harder (RESULTS.md, "Tuning"). Eval transforms are never changed."""
    if override in ("", "card"):
        return spec
    if override == "none":
        return AugSpec(**{**spec.__dict__, "crop": "none"})
    kind, _, arg = override.partition(":")
    if kind == "pad" and arg.isdigit():
        return AugSpec(**{**spec.__dict__, "crop": "pad_random", "pad": int(arg), "resize": 0})
    raise ValueError(f"--augment {override!r}: expected card, none or pad:N (N pixels)")


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


def open_image(data: bytes) -> Image.Image:
    """Parse the header only (PIL is lazy): size and format before any pixel is decoded."""
    return Image.open(io.BytesIO(data), formats=FORMATS)


def decode(data: bytes | Image.Image, spec: AugSpec, shrink_to: int = 0) -> Image.Image:
    """Decode to the spec's mode. For JPEGs, `draft` lets libjpeg decode at 1/2, 1/4 or 1/8
    scale directly (DCT-domain scaling), as long as the shorter side stays >= shrink_to:
    ~1.4x faster decodes when the crop is smaller than the image (BENCHMARKS.md, CPU-2 decode pipelines)."""
    img = open_image(data) if isinstance(data, bytes) else data
    mode = "L" if spec.channels == 1 else "RGB"
    if shrink_to and img.format == "JPEG":
        w, h = img.size
        scale = min(w, h) / shrink_to
        if scale >= 2:
            img.draft(mode, (math.ceil(w / scale), math.ceil(h / scale)))
    img.load()
    return img if img.mode == mode else img.convert(mode)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 (C, H, W), a view of HWC memory (what channels_last wants)."""
    arr = np.array(img, dtype=np.uint8)
    return torch.from_numpy(arr[:, :, None] if arr.ndim == 2 else arr).permute(2, 0, 1)


def resize(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 (C, H, W), as PIL's BILINEAR does: torch's uint8
    kernel runs ~6x faster than PIL's (0.2 vs 1.4 ms for 500x500 -> 224, one core)."""
    if t.shape[1:] == (h, w):
        return t
    return F.interpolate(t[None], size=(h, w), mode="bilinear", antialias=True)[0]


def resize_shorter(t: torch.Tensor, side: int) -> torch.Tensor:
    h, w = t.shape[1:]
    s = side / min(h, w)
    return resize(t, max(side, round(h * s)), max(side, round(w * s)))


def train_image(data: bytes, spec: AugSpec, rng: random.Random) -> torch.Tensor:
    """Bytes -> augmented uint8 (C, H, W)."""
    if spec.crop == "random_resized":
        img = open_image(data)
        full_w = img.size[0]
        l, t, w, h = random_resized_box(*img.size, spec, rng)
        img = decode(img, spec, shrink_to=round(spec.size * min(img.size) / min(w, h)))
        f = img.size[0] / full_w                       # draft may have decoded smaller
        box = (int(l * f), int(t * f), max(int(l * f) + 1, round((l + w) * f)), max(int(t * f) + 1, round((t + h) * f)))
        out = resize(to_tensor(img.crop(box)), spec.size, spec.size)
    elif spec.crop == "random":
        side = spec.resize or spec.size
        out = resize_shorter(to_tensor(decode(data, spec, shrink_to=side)), side)
        top, left = rng.randint(0, out.shape[1] - spec.size), rng.randint(0, out.shape[2] - spec.size)
        out = out[:, top:top + spec.size, left:left + spec.size]
    elif spec.crop == "pad_random":
        out = F.pad(to_tensor(decode(data, spec)), (spec.pad,) * 4)
        top, left = rng.randint(0, out.shape[1] - spec.size), rng.randint(0, out.shape[2] - spec.size)
        out = out[:, top:top + spec.size, left:left + spec.size]
    else:
        out = eval_image(data, spec)
    if spec.flip and rng.random() < 0.5:
        out = out.flip(2)
    return out


def eval_image(data: bytes, spec: AugSpec) -> torch.Tensor:
    """Resize the shorter side to `resize` (or `size`), centre crop `size`: uint8 (C, H, W)."""
    side = spec.resize or spec.size
    out = resize_shorter(to_tensor(decode(data, spec, shrink_to=side)), side)
    top, left = (out.shape[1] - spec.size) // 2, (out.shape[2] - spec.size) // 2
    return out[:, top:top + spec.size, left:left + spec.size]
