"""Shards in an S3 bucket (issue 28 item 3, reading side): a real S3 API on this machine (moto's
server, started here and stopped after), training with 2 workers, a mid-epoch resume and
rank_labels and predict, all reading s3:// through fsspec: no shell, no `pipe:`."""
import json
import shutil

import pytest
from safetensors.torch import load_file

from tests.shardkit import make_digit_shards, train_argv

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[s3]')")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
    """digits shards converted locally, uploaded to s3://shards/digits/; the card and manifest
    stay local (a remote shard's card is looked for in the current folder)."""
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(k, v)
        local = make_digit_shards(tmp_path_factory.mktemp("s3") / "d", n_train=500, n_test=100, shard_size=100)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("shards")
        for tar in sorted(local.glob("*.tar")) + sorted(local.glob("*.idx")):
            fs.put_file(str(tar), f"shards/digits/{tar.name}")
        cards = tmp_path_factory.mktemp("cards")
        for name in ("digits.json", "digits.parquet"):                   # the card and its manifest
            shutil.copy(local / name, cards / name)
        yield cards
    srv.stop()


def s3_argv(out, *extra):
    argv = train_argv("s3://shards/digits/digits-{000..003}.tar", out, "--workers", "2", "--save-every", "3",
                      "--val-data", "s3://shards/digits/digits-val-000.tar",
                      "--test-data", "s3://shards/digits/digits-test-000.tar", *extra)
    return argv


def test_train_resume_and_rank_from_a_bucket(bucket, tmp_path, monkeypatch):
    from tools.rank_labels import cli as rank_cli
    from train import loop
    from train.limit import cli as train_cli
    monkeypatch.chdir(bucket)
    assert train_cli(s3_argv(tmp_path / "whole")) == 0
    row = json.loads((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["samples_seen"] == 400 and row["samples_skipped"] == 0 and row["test_acc"] is not None

    real = loop.train_step                      # stop the run at step 5: the last save was at step 3

    def stop_at_5(run, batch, meter):
        if run.step == 5:
            raise KeyboardInterrupt
        return real(run, batch, meter)
    monkeypatch.setattr(loop, "train_step", stop_at_5)
    assert train_cli(s3_argv(tmp_path / "cut")) == 130
    assert json.loads((tmp_path / "cut" / "checkpoints" / "last" / "meta.json").read_text())["in_epoch"]
    monkeypatch.setattr(loop, "train_step", real)
    assert train_cli(s3_argv(tmp_path / "cut", "--resume", "auto")) == 0
    a = load_file(tmp_path / "whole" / "checkpoints" / "last" / "model.safetensors")
    b = load_file(tmp_path / "cut" / "checkpoints" / "last" / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)                         # bit-exact through the bucket

    # the run's config.json names s3:// shards: refused unless --trust-urls (they reach the network)
    assert rank_cli(["--run", str(tmp_path / "whole"), "--out", str(tmp_path / "labels"), "--workers", "2"]) == 2
    assert rank_cli(["--run", str(tmp_path / "whole"), "--out", str(tmp_path / "labels"), "--workers", "2",
                     "--trust-urls"]) == 0
    assert json.loads((tmp_path / "labels" / "summary.json").read_text())["n"] == 400
    from tools.predict import cli as predict_cli
    assert predict_cli([str(tmp_path / "whole"), "--data", "s3://shards/digits/digits-test-000.tar", "--workers", "2",
                        "--out", str(tmp_path / "pred"), "--trust-urls"]) == 0
    report = json.loads((tmp_path / "pred" / "report.json").read_text())
    assert report["n"] == 100 and report["accuracy"] == row["test_acc"]
