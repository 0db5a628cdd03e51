"""A source image -> the bytes a shard stores (docs/architecture.md section 4): pixels become
lossless PNG, JPEG and 8-bit PNG files keep their bytes unless --resize asks otherwise."""
import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline import records
from pipeline.convert import hf_parquet, wds_adopt


def encode_image(source, resize: int, quality: int) -> tuple[bytes, str]:
    """-> (bytes, ext). Pixels become lossless PNG; files keep their bytes when they are
    JPEG or 8-bit PNG and no resize is asked, else they are re-encoded (never upscaled):
    16-bit images become 8-bit. Images above records.MAX_PIXELS raise ValueError (a skip),
    unless --resize brings them down."""
    if isinstance(source, np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(source).save(buf, format="PNG")
        return buf.getvalue(), "png"
    # a Hugging Face Parquet row (FILE::ROW): the embedded bytes, kept as they are like a file's
    # or an adopted shard's member (TAR::N)
    data = (hf_parquet.row_bytes(source) if hf_parquet.is_row(source) else
            wds_adopt.member_bytes(source) if wds_adopt.is_member(source) else Path(source).read_bytes())
    try:
        img = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:   # PIL's message names the buffer's address: not reproducible
        raise Image.UnidentifiedImageError("cannot identify image file") from None
    fmt = img.format
    if resize and min(img.size) > resize:
        return _resized(img, resize, quality), "jpg"
    too_big = records.pixel_problem(*img.size)
    if too_big:
        raise ValueError(f"{too_big}; " + (f"its shorter side is already <= --resize {resize}" if resize
                                           else "--resize downscales such images"))
    img.draft(img.mode, (64, 64))  # cheap full-file check: the decoder must reach the end
    img.load()
    if fmt == "JPEG" or (fmt == "PNG" and not _wide_png(data)):
        return data, "jpg" if fmt == "JPEG" else "png"
    buf = io.BytesIO()
    records.to_8bit(img).save(buf, format="PNG")
    return buf.getvalue(), "png"


def _wide_png(data: bytes) -> bool:
    """More than 8 bits per channel (the IHDR bit depth): readers would get them clipped."""
    head = records.image_header(data)
    return head is None or head[2] > 8


def _resized(img: Image.Image, resize: int, quality: int) -> bytes:
    """The shorter side at `resize`, as JPEG; JPEGs are decoded at a reduced scale (draft)."""
    img.draft("RGB", (img.size[0] * resize // min(img.size), img.size[1] * resize // min(img.size)))
    img = records.to_8bit(img).convert("RGB")
    s = resize / min(img.size)
    size = (max(resize, round(img.size[0] * s)), max(resize, round(img.size[1] * s)))
    too_big = records.pixel_problem(*size)
    if too_big:                   # a long thin strip: still too many pixels once resized
        raise ValueError(f"resized to {too_big}")
    img = img.resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
