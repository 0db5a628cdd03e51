"""Shards in object storage (s3://, gs://) opened through a library, never through a shell.

webdataset opens `gs://` with the `gsutil` command and has no `s3://` at all (users wrote
`pipe:aws s3 cp ...`, a shell command). Here both go through fsspec (s3fs or gcsfs, the
optional extra `pip install -e '.[s3]'`), with credentials from the standard environment and
config files (AWS_ACCESS_KEY_ID, AWS_PROFILE, ~/.aws/credentials, AWS_ENDPOINT_URL for an
S3-compatible server; GOOGLE_APPLICATION_CREDENTIALS). A URL read from a card or a run folder
is still refused unless --trust-urls (pipeline.shards.check_file_url): it can reach the network,
but it can no longer run a command."""
from pipeline.shards import DataError

OBJECT_SCHEMES = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs"}


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def is_object_url(url: str) -> bool:
    return scheme(url) in OBJECT_SCHEMES


def open_url(url: str, mode: str = "rb"):
    """A file object for an object-storage URL (read through; fsspec's read-ahead cache).
    A missing library is a one-line DataError; a missing object is FileNotFoundError, as for
    a local shard."""
    try:
        from fsspec.core import url_to_fs
        fs, path = url_to_fs(url)
    except ImportError:
        raise DataError(f"{url}: reading {scheme(url)}:// needs {OBJECT_SCHEMES[scheme(url)]}: "
                        "pip install -e '.[s3]'") from None
    return fs.open(path, mode, cache_type="readahead", block_size=4 << 20)

