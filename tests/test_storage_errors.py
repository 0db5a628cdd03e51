"""A bucket that cannot be reached is one line and exit code 2, not a traceback: s3fs passes on
botocore's errors that carry no HTTP response (EndpointConnectionError, NoCredentialsError)
unchanged, and they are not OSError (pipeline.remote.storage_errors); the HTTP errors it
translates (AccessDenied, a wrong key) are PermissionError, an OSError."""
import socket

import pytest

from tests.shardkit import train_argv
from tools import make_shards, predict, rank_labels, review_labels
from train import limit

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[s3]')")
from botocore.exceptions import EndpointConnectionError, NoCredentialsError  # noqa: E402

CLIS = {"limit": limit.cli, "predict": predict.cli, "rank_labels": rank_labels.cli,
        "review_labels": review_labels.cli, "make_shards": make_shards.main}


@pytest.fixture
def nowhere(monkeypatch, tmp_path):
    """The AWS variables pointing at a local port nothing listens on, one attempt per call."""
    with socket.socket() as s:                     # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_MAX_ATTEMPTS": "1", "LIMIT_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(k, v)


def one_error_line(capsys, prog):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err[0]
    return err[0]


def test_training_from_an_unreachable_bucket(nowhere, tmp_path, capsys):
    assert limit.cli(train_argv("s3://shards/digits/", tmp_path / "run")) == 2
    assert "Could not connect to the endpoint URL" in one_error_line(capsys, "limit")


def test_converting_into_an_unreachable_bucket(nowhere, tmp_path, capsys):
    from tests.shardkit import make_digit_idx
    src = make_digit_idx(tmp_path / "idx", n_train=50, n_test=10)
    assert make_shards.main(["mnist", str(src), "--out", "s3://shards/digits/", "--name", "digits"]) == 2
    assert "Could not connect to the endpoint URL" in one_error_line(capsys, "make_shards")


@pytest.mark.parametrize("prog", sorted(CLIS))
@pytest.mark.parametrize("error", [EndpointConnectionError(endpoint_url="http://x"), NoCredentialsError(),
                                   PermissionError("Access Denied")],            # s3fs's AccessDenied, a wrong key
                         ids=["endpoint", "credentials", "denied"])
def test_every_command_that_reads_buckets_says_one_line(prog, error, monkeypatch, capsys):
    """Wherever the storage library fails inside a command (listing, a card, a shard mid-read),
    the command's own handler catches it. For make_shards, the failure comes from convert."""
    def fail(*args, **kwargs):
        raise error
    module = {"limit": limit, "predict": predict, "rank_labels": rank_labels,
              "review_labels": review_labels}.get(prog)
    if module is None:
        monkeypatch.setattr(make_shards, "convert", fail)
        argv = ["mnist", "src", "--out", "s3://b/x/", "--name", "x"]
    else:
        monkeypatch.setattr(module, "main", fail)
        argv = []
    assert CLIS[prog](argv) == 2
    one_error_line(capsys, prog)
