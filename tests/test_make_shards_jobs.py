"""tools/make_shards.py as a job: byte-identical output for any --workers, nothing half-written
under a final name, bad options, a failing worker, and DALI reading what it wrote."""

import numpy as np
import pytest
import webdataset as wds

import pipeline.convert.writer
from conftest import make_image
from pipeline.records import encode_sample, make_key
from tools import make_shards
from tests.shardcheck import assert_one_line_error, make_clothing1m, read_back, reference_idx, run, tar_members


# ---------------------------------------------------------------------------- determinism, atomicity

def test_workers_give_byte_identical_output(tmp_path, capsys):
    src = tmp_path / "clothing1m"
    make_clothing1m(src, annotations=False)
    (src / "images/0/00/12345678.jpg").write_bytes(b"")          # a skipped image too
    outs = []
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        rc, _, err = run(["clothing1m", src, "--out", out, "--resize", "200", "--shard-size", "3",
                          "--workers", workers], capsys)
        assert rc == 0, err
        outs.append(out)
    names = sorted(p.name for p in outs[0].iterdir())
    assert names == sorted(p.name for p in outs[1].iterdir())
    assert len([n for n in names if n.endswith(".tar")]) == 6
    for n in names:
        a, b = (outs[0] / n).read_bytes(), (outs[1] / n).read_bytes()
        assert a == b, n              # the card too: it records neither --workers nor --out
    got = read_back(outs[1], "clothing1m", tmp_path)
    assert len(got["card"]["skipped"]) == 1


def test_a_failure_mid_job_leaves_only_tmp_names(tmp_path, capsys, monkeypatch):
    src = tmp_path / "clothing1m"
    make_clothing1m(src, annotations=False)
    out = tmp_path / "shards"
    per_sample = len(encode_sample("k", b"", "jpg", 0, 0, -1))
    real, calls = pipeline.convert.writer._member, [0]

    def disk_fills(name, data):         # dies inside the second shard's tar
        calls[0] += 1
        if calls[0] > 3 * per_sample + per_sample // 2:
            raise OSError(28, "No space left on device")
        return real(name, data)
    monkeypatch.setattr(pipeline.convert.writer, "_member", disk_fills)
    rc, _, err = run(["clothing1m", src, "--out", out, "--shard-size", "3"], capsys)
    assert_one_line_error(rc, err, "No space left on device")
    names = sorted(p.name for p in out.iterdir())
    # NAME.partial/ keeps the finished shard's record so that the same command resumes
    # the failed shard's private temporary folder is removed with it (pipeline/safe_io.py)
    assert names == ["clothing1m-000.idx", "clothing1m-000.tar", "clothing1m.partial"]
    assert sorted(p.name for p in (out / "clothing1m.partial" / "shards").iterdir()) == ["clothing1m-000.tar.json"]
    # what carries a final name is complete
    tar = out / "clothing1m-000.tar"
    assert len(list(wds.WebDataset([str(tar)], shardshuffle=False))) == 3
    assert len(tar_members(tar)) == 3 * per_sample
    assert (out / "clothing1m-000.idx").read_text() == reference_idx(tar, tmp_path)

    monkeypatch.setattr(pipeline.convert.writer, "_member", real)      # a rerun completes and cleans up
    rc, _, err = run(["clothing1m", src, "--out", out, "--shard-size", "3"], capsys)
    assert rc == 0, err
    assert read_back(out, "clothing1m", tmp_path)["card"]["splits"]["train"]["count"] == 10


@pytest.mark.parametrize("flags", [["--name", "a.b"], ["--resize", "-1"], ["--shard-size", "0"],
                                   ["--val-fraction", "1"], ["--workers", "0"]])
def test_bad_options_exit_2(tmp_path, capsys, flags):
    make_image(tmp_path / "folder" / "a" / "x.jpg")
    with pytest.raises(SystemExit) as e:
        make_shards.main(["imagefolder", str(tmp_path / "folder"), "--out", str(tmp_path / "o"), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flags[0] in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_failing_worker_stops_the_pool(tmp_path, capsys, monkeypatch):
    import multiprocessing
    src = tmp_path / "clothing1m"
    truth = make_clothing1m(src, annotations=False)
    bad = make_key(truth["splits"]["train"][4])
    real = pipeline.convert.writer._member

    def fails_on_one_sample(name, data):   # forked workers inherit the patch
        if name.startswith(bad + "."):
            raise OSError(5, "Input/output error")
        return real(name, data)
    monkeypatch.setattr(pipeline.convert.writer, "_member", fails_on_one_sample)
    out = tmp_path / "shards"
    rc, _, err = run(["clothing1m", src, "--out", out, "--shard-size", "1", "--workers", "2"], capsys)
    assert_one_line_error(rc, err, "Input/output error")
    assert multiprocessing.active_children() == []           # no worker left writing shards
    names = {p.name for p in out.iterdir()}
    assert "clothing1m-004.tar" not in names
    assert not {"clothing1m.json", "clothing1m.parquet"} & names
    for tar in out.glob("*.tar"):                             # whatever has a final name is whole
        assert len(tar_members(tar)) == len(encode_sample("k", b"", "jpg", 0, 0, -1))
        assert tar.with_suffix(".idx").read_text() == reference_idx(tar, tmp_path)


def test_dali_reads_the_shards_with_their_index(tmp_path, capsys):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn
    src = tmp_path / "clothing1m"
    make_clothing1m(src, annotations=False)
    out = tmp_path / "shards"
    rc, _, err = run(["clothing1m", src, "--out", out, "--shard-size", "4"], capsys)
    assert rc == 0, err
    got = read_back(out, "clothing1m", tmp_path)
    files = [s["file"] for s in got["card"]["splits"]["train"]["shards"]]

    @dali.pipeline_def(batch_size=10, num_threads=1, device_id=None, seed=0)
    def pipe():
        images, cls = fn.readers.webdataset(paths=[str(out / f) for f in files],
                                            index_paths=[str(out / (f[:-4] + ".idx")) for f in files],
                                            ext=["jpg", "cls"], missing_component_behavior="error",
                                            random_shuffle=False)
        return images, cls
    p = pipe()
    p.build()
    assert p.epoch_size()["__Webdataset_0"] == 10
    images, cls = p.run()
    assert [bytes(np.asarray(images[i])) for i in range(10)] == [s["data"] for s in got["train"]]
    assert [int(bytes(np.asarray(cls[i]))) for i in range(10)] == [s["cls"] for s in got["train"]]
