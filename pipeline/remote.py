"""Shards in object storage (s3://, gs://) opened through a library, never through a shell.

webdataset opens `gs://` with the `gsutil` command and has no `s3://` at all (users wrote
`pipe:aws s3 cp ...`, a shell command). Here both go through fsspec (s3fs or gcsfs, the
optional extra `pip install -e '.[s3]'`), with credentials from the standard environment and
config files (AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws/credentials, AWS_ENDPOINT_URL for an
S3-compatible server; GOOGLE_APPLICATION_CREDENTIALS). A URL read from a card or a run folder
is still refused unless --trust-urls (pipeline.shards.check_file_url): it can reach the network,
but it can no longer run a command.

Everything that touches a bucket goes through the few functions here (reading, listing,
sizes, uploads): the readers, the card fetched from a bucket (pipeline/bucket_cards.py) and
make_shards' `--out s3://...` (pipeline/convert/bucket.py)."""
from pipeline.shards import DataError

OBJECT_SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_object_url(url) -> bool:
    return isinstance(url, str) and scheme(url) in OBJECT_SCHEMES


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for an object-storage URL; a missing library is a
    one-line DataError."""
    try:
        from fsspec.core import url_to_fs
        return url_to_fs(url)
    except ImportError:
        raise DataError(f"{url}: {scheme(url)}:// needs {OBJECT_SCHEMES[scheme(url)]}: "
                        "pip install -e '.[s3]'") from None


def storage_errors() -> tuple:
    """What reading or writing data can raise besides DataError, for the commands' one-line
    error: OSError (a local file, and what s3fs makes of an HTTP error: AccessDenied and a
    wrong key are PermissionError), and the storage libraries' own failures that are not
    OSError: s3fs passes on unchanged any error without an HTTP response (botocore's
    EndpointConnectionError for an unreachable endpoint, NoCredentialsError), and gcsfs raises
    aiohttp's and google-auth's own. Imported only when an error is being handled, so a run
    without object storage never loads them."""
    found = [OSError]
    for module, name in (("botocore.exceptions", "BotoCoreError"), ("aiohttp", "ClientError"),
                         ("google.auth.exceptions", "GoogleAuthError"), ("gcsfs.retry", "HttpError")):
        try:
            found.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def join(url: str, name: str) -> str:
    """`s3://b/p` or `s3://b/p/` + `x.tar` -> `s3://b/p/x.tar`."""
    return url.rstrip("/") + "/" + name


def open_url(url: str, mode: str = "rb"):
    """A file object for an object-storage URL (read through; fsspec's read-ahead cache).
    A missing object is FileNotFoundError, as for a local shard."""
    fs, path = filesystem(url)
    return fs.open(path, mode, cache_type="readahead", block_size=4 << 20)


def sizes(folder_url: str) -> dict[str, int]:
    """{name: size} of the objects directly in a bucket folder, listed afresh (fsspec caches
    listings, and this process may have just written there); {} when there is none."""
    fs, path = filesystem(folder_url)
    try:
        entries = fs.ls(path.rstrip("/"), detail=True, refresh=True)
    except FileNotFoundError:
        return {}
    return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0)
            for e in entries if e.get("type") == "file"}


def folders(folder_url: str) -> list[str]:
    """Names of the sub-folders (common prefixes) of a bucket folder."""
    fs, path = filesystem(folder_url)
    try:
        entries = fs.ls(path.rstrip("/"), detail=True, refresh=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "directory")


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def read_capped(url: str, cap: int, what: str) -> bytes | None:
    """The bytes of a small object (a card, a progress record) of at most `cap` bytes; None
    when it does not exist. `what` names it in errors, which never quote its content."""
    fs, path = filesystem(url)
    try:
        size = fs.size(path)
        if size is not None and size > cap:
            raise DataError(f"{what} {url}: larger than {cap >> 20} MiB")
        with fs.open(path, "rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError:
        return None
    if len(data) > cap:
        raise DataError(f"{what} {url}: larger than {cap >> 20} MiB")
    return data


def upload(local, url: str) -> None:
    """A complete local file put at `url`. An S3 PUT (or a multipart upload, completed at the
    end) is atomic: the object appears whole under its final key or not at all, so a kill
    mid-upload leaves no half-written object, only the old one or none."""
    fs, path = filesystem(url)
    fs.put_file(str(local), path)


def put_bytes(url: str, data: bytes) -> None:
    """A small object (a progress record) written in one PUT: whole or not at all."""
    fs, path = filesystem(url)
    fs.pipe_file(path, data)


def download(url: str, local) -> None:
    """The object at `url` into `local`, a path no one else can see yet (safe_io.temp_path)."""
    fs, path = filesystem(url)
    fs.get_file(path, str(local))


def remove(urls: list[str]) -> None:
    """Delete objects; those already gone are no error."""
    for url in urls:
        fs, path = filesystem(url)
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            pass


def remove_tree(url: str) -> None:
    """Delete every object under a bucket folder (`NAME.partial/`); none there is no error."""
    fs, path = filesystem(url)
    try:
        fs.rm(path.rstrip("/"), recursive=True)
    except FileNotFoundError:
        pass


def copy(src: str, dest: str) -> None:
    """A server-side copy inside one bucket (no bytes through this machine)."""
    fs, path = filesystem(src)
    fs.copy(path, filesystem(dest)[1])
