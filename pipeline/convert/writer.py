"""Deterministic, atomic shard writing: the same samples always give the same bytes, and a
shard only carries its final name once it is complete (a killed job leaves `*.tmp` files).
Written through pipeline/safe_io.py: a shared --out may hold links planted at any fixed name."""
import io
import tarfile
from pathlib import Path

from pipeline import safe_io, shardset


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0          # fixed so that re-running gives byte-identical shards
    info.mode = 0o444
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> int:
    """Write `samples` (dicts of member name -> bytes) to `path` via a temporary name,
    then write DALI's index beside it. Returns the number of samples written."""
    path = Path(path)
    with safe_io.temp_path(path) as tmp:
        with open(tmp, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT,
                                                encoding="utf-8") as tar:
            for sample in samples:
                for name, data in sample.items():
                    tar.addfile(*_member(name, data))
        write_dali_index(tmp, shardset.index_path(path))     # the index first: a tar's name means complete
    return len(samples)


def write_dali_index(tar_path: Path, idx_path: Path) -> None:
    """DALI's webdataset index of a written tar (its format: pipeline/shardset.py)."""
    text = shardset.index_text(tar_path)
    safe_io.write_text(idx_path, text)
