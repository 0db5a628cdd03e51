"""Shared test helpers. Generic on purpose: small generated images, nothing dataset-specific."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # timm must never try the hub from a test


def make_image(path, size=(32, 24), seed=0, fmt=None, mode="RGB", quality=90) -> Path:
    """Write a deterministic image of `size` (width, height) to `path`: a smooth gradient with
    a little seeded noise, so JPEGs stay small and each seed gives different pixels. The format
    follows the suffix unless `fmt` is given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.integers(0, 256, 3)
    rgb = np.stack([(xx * 255 // max(w - 1, 1) + base[0]) % 256,
                    (yy * 255 // max(h - 1, 1) + base[1]) % 256,
                    ((xx + yy) * 3 + base[2]) % 256], axis=-1)
    rgb = np.clip(rgb + rng.integers(-8, 9, rgb.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(rgb).convert(mode)
    fmt = fmt or Image.registered_extensions()[path.suffix.lower()]
    img.save(path, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))
    return path


@pytest.fixture
def write_image():
    """`write_image(path, size=(w, h), seed=0, fmt=None, mode="RGB")` -> path of a generated image."""
    return make_image
