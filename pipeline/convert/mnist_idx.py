"""MNIST's idx files (raw or gzipped): the four files of the layout and a reader that checks
each header against its payload. Shared by the fetcher (tools/fetch_mnist.py) and the mnist
source of the conversion (pipeline/convert/sources.py)."""
import gzip
import math
from pathlib import Path

# key -> (file name without .gz, MD5 of the .gz as torchvision lists it, shape)
FILES = {
    "train_images": ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873", (60000, 28, 28)),
    "train_labels": ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432", (60000,)),
    "test_images": ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3", (10000, 28, 28)),
    "test_labels": ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c", (10000,)),
}
GZIP_MAGIC = b"\x1f\x8b"


def unpacked(data: bytes, where) -> bytes:
    """Gunzip if the bytes say gzip; judged by content, since names lie."""
    if data[:2] != GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as e:
        raise ValueError(f"{where}: corrupt gzip ({e})") from None


def idx_dims(data: bytes, where) -> tuple[int, ...]:
    """Check an idx header (ubyte, 1 or 3 dims) against the payload length."""
    if len(data) < 4 or data[:3] != b"\0\0\x08" or data[3] not in (1, 3):
        raise ValueError(f"{where}: not a ubyte idx file (magic {data[:4].hex()})")
    if len(data) < 4 + 4 * (ndim := data[3]):
        raise ValueError(f"{where}: idx header truncated")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    want = 4 + 4 * ndim + math.prod(dims)
    if len(data) != want:
        raise ValueError(f"{where}: header says {want} bytes for dims {dims}, file has {len(data)}")
    return dims


def read_idx(path):
    """Read an idx file, gzipped or raw, into a uint8 array of its header's shape."""
    import numpy as np  # lazily: fetching alone should run on a bare interpreter
    data = unpacked(Path(path).read_bytes(), path)
    dims = idx_dims(data, path)
    # copy: frombuffer over bytes is read-only, which torch.from_numpy warns about
    return np.frombuffer(data, np.uint8, offset=4 + 4 * len(dims)).reshape(dims).copy()


def find_existing(root: Path, base: str) -> Path | None:
    for folder in (root, root / "MNIST" / "raw"):  # ours, then torchvision's layout
        for name in (base + ".gz", base):
            if (folder / name).is_file():
                return folder / name
    return None

