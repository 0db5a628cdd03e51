"""Every file a command writes or reads from a folder it did not make goes through here.

A run folder, a labels folder or a shared `--out` may come from a stranger, who can plant a
symbolic link at any name a command writes (`review/tasks.json -> ~/.bashrc`). So:
  - a file is written under a fresh, unpredictable name created exclusively in its folder
    (`mkstemp`: O_CREAT|O_EXCL|O_NOFOLLOW), then renamed over the final name; a rename
    replaces a link planted there, never writes through it, and a kill leaves the old file;
  - a library that writes to a path (parquet, safetensors, savefig, tar) writes inside a
    private fresh folder (mode 0700, nobody else can plant a name in it), then the file is
    renamed into place;
  - appends open with O_NOFOLLOW|O_APPEND and only a regular file;
  - an output folder, or a sub-folder a command writes, that is a link is refused;
  - deleting (--overwrite) removes regular files and real folders only.
A read of a file a stranger may name opens only a regular file (a FIFO would hang the command,
/dev/zero fill the memory) and checks its size cap before reading. Refusals are OutputRefused
or DataError: one line, exit code 2. README, "Security"."""
import errno
import io
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from pipeline.shards import DataError

FILE_MODE = 0o644            # mkstemp makes 0600; outputs are read by the user's other tools


class OutputRefused(DataError):
    """An output path that would write through a link or over something that is not ours."""


# ---- folders ----

def out_dir(path, what: str = "--out") -> Path:
    """`path` as a real folder, made if missing; a link or a file there is refused."""
    path = Path(path)
    _no_link(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputRefused(f"{what} {path}: exists and is not a folder") from None
    except OSError as e:
        raise OutputRefused(f"{what} {path}: not writable, cannot make the folder ({e.strerror or e})") from None
    _no_link(path, what)      # made by someone else between the check and mkdir: look again
    if not path.is_dir():
        raise OutputRefused(f"{what} {path}: exists and is not a folder")
    return path


def _no_link(path: Path, what: str) -> None:
    if path.is_symlink():
        raise OutputRefused(f"{what} {path}: is a symbolic link; refusing to write through it "
                            "(a received folder may point it anywhere; remove the link)")


def _folder_of(path: Path) -> Path:
    """The folder a file goes into: must be a real folder (made by out_dir or the user)."""
    _no_link(path.parent, "output folder")
    if not path.parent.is_dir():
        raise OutputRefused(f"output folder {path.parent}: missing or not a folder")
    return path.parent


# ---- whole files ----

def write_bytes(path, data: bytes, durable: bool = True) -> Path:
    """`data` at `path`, whole or not at all. durable: fsync before the rename (a crash
    leaves the old file or the new one, never an empty one); thumbnails skip it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=_folder_of(path), prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        _rename(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_text(path, text: str, durable: bool = True) -> Path:
    return write_bytes(path, text.encode("utf-8"), durable)


def write_json(path, obj, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def savefig(fig, path, **kwargs) -> Path:
    """matplotlib's savefig through write_bytes (its own savefig opens the name with "w")."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".").lower() or "png", **kwargs)
    return write_bytes(path, buf.getvalue())


@contextmanager
def temp_path(path):
    """A path for a library that writes a file or folder by name (pyarrow, safetensors,
    tarfile): it lies in a private fresh folder beside `path` and is renamed onto `path`
    when the block ends without an error. Yields the temporary path."""
    path = Path(path)
    private = Path(tempfile.mkdtemp(dir=_folder_of(path), prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp = private / path.name
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, FILE_MODE)
            _fsync(tmp)
        _rename(tmp, path)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _rename(tmp, path: Path) -> None:
    """rename(2) replaces a link at `path` itself; a folder at `path` is not ours to replace."""
    if path.is_dir() and not path.is_symlink() and not Path(tmp).is_dir():
        raise OutputRefused(f"output {path}: is a folder, expected a file name")
    try:
        os.replace(tmp, path)
    except OSError as e:
        raise OutputRefused(f"output {path}: cannot write it ({e.strerror or e})") from None


def private_dir(dest) -> Path:
    """A fresh folder (mode 0700) beside `dest` to build a folder output in by name
    (a checkpoint); swap it in with replace_dir."""
    dest = Path(dest)
    return Path(tempfile.mkdtemp(dir=_folder_of(dest), prefix=f".{dest.name}.", suffix=".tmp"))


def replace_dir(src: Path, dest: Path, old: Path) -> None:
    """Swap a finished folder `src` (from private_dir) in at `dest`, its files synced first;
    the previous `dest` passes through `old` (so a kill between the two renames leaves it
    findable there). Links at `dest` or `old` are removed as links, never followed."""
    for f in src.iterdir():
        if f.is_file() and not f.is_symlink():
            os.chmod(f, FILE_MODE)
            _fsync(f)
    os.chmod(src, 0o755)
    _discard(old)
    if dest.is_symlink():
        dest.unlink()
    elif dest.exists():
        os.replace(dest, old)
    os.replace(src, dest)
    _discard(old)


def _discard(path: Path) -> None:
    """A scratch name of ours: a link planted there is removed as a link."""
    if path.is_symlink():
        path.unlink()
    else:
        remove(path, missing_ok=True)


# ---- appends ----

def open_append(path):
    """A text file opened for appending lines: never through a link, only a regular file
    (O_NONBLOCK at open: a FIFO planted there fails instead of waiting for a reader)."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, FILE_MODE)
    except OSError as e:
        raise OutputRefused(f"output {path}: cannot append to it ({_why(e)})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputRefused(f"output {path}: not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a", encoding="utf-8")


def _why(e: OSError) -> str:
    return "it is a symbolic link" if e.errno == errno.ELOOP else (e.strerror or str(e))


# ---- deleting ----

def remove(path, missing_ok: bool = False) -> None:
    """Delete a regular file or a real folder (its links are removed, never followed; rmtree
    does not descend into them). Anything else at `path` is refused."""
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    if stat.S_ISREG(st.st_mode):
        path.unlink()
    elif stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file or folder"
        raise OutputRefused(f"{path}: is {kind}; refusing to delete or write through it (remove it yourself)")


# ---- reading a file a stranger may name ----

def read_capped(path, cap: int, what: str) -> bytes:
    """The bytes of a regular file of at most `cap` bytes; `what` names it in errors (which
    never quote its content)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DataError(f"{what} {path}: not found") from None
    except OSError as e:
        raise DataError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{what} {path}: not a regular file (a pipe, device or folder)")
        if st.st_size > cap:
            raise DataError(f"{what} {path}: larger than {_size(cap)}")
        os.set_blocking(fd, True)
        data = f.read(cap + 1)
    if len(data) > cap:        # grew while being read
        raise DataError(f"{what} {path}: larger than {_size(cap)}")
    return data


def check_regular(path, cap: int, what: str) -> Path:
    """For a file a library opens by name (parquet, safetensors, torch): a regular file within
    its cap, checked before the library reads it."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DataError(f"{what} {path}: not found") from None
    except OSError as e:
        raise DataError(f"{what} {path}: cannot read it ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{what} {path}: not a regular file (a pipe, device or folder)")
    if st.st_size > cap:
        raise DataError(f"{what} {path}: larger than {_size(cap)}")
    return path


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} bytes"
