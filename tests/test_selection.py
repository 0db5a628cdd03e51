"""An epoch over a subset or a balanced draw costs what it uses: the CPU reader seeks past
the members of unchosen samples in local shards (pipeline/selection.py, pipeline/tario.py)."""
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from pipeline import loader as data
from pipeline.tario import iter_tar
from tools import make_shards


@pytest.fixture(scope="module")
def big_shards(tmp_path_factory):
    """400 noise PNGs of ~28 KB in 4 classes: member data, not the 512-byte headers, is what an
    epoch reads (the headers of skipped samples are still read: about 1.5 KB a sample)."""
    return noise_png_shards(tmp_path_factory.mktemp("sel"), 400, 96, "n", 50, "0.1")


def noise_png_shards(root, count: int, side: int, name: str, shard_size: int, val_fraction: str):
    """`count` random side x side PNGs in 4 class folders, converted to shards NAME-*.tar."""
    rng = np.random.default_rng(0)
    for i in range(count):
        path = root / "src" / f"c{i % 4}" / f"img{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path)
    assert make_shards.main(["imagefolder", str(root / "src"), "--out", str(root / "shards"), "--name", name,
                             "--shard-size", str(shard_size), "--val-fraction", val_fraction]) == 0
    return root / "shards"


def rchar() -> int:
    return int(next(ln for ln in open("/proc/self/io") if ln.startswith("rchar")).split()[1])


def epoch_bytes(ds, select, epoch=0):
    ld = data.build_loaders(ds, data.spec_from_card(ds.card), batch_size=16, workers=0, seed=0,
                            noise=data.noise_table(ds, "none", "", 0), keep=select)["train"]
    before = rchar()
    seen = [i for b in ld(epoch) if len(b) for i in b.index.tolist()]
    return rchar() - before, seen


def shard_bytes(ds):
    return sum((ds.card_path.parent / s["file"]).stat().st_size for s in ds.card["splits"]["train"]["shards"])


def test_a_subset_epoch_reads_only_its_samples(big_shards):
    ds = data.resolve([str(big_shards)])
    n_train = ds.card["splits"]["train"]["count"]
    full, seen_all = epoch_bytes(ds, None)
    assert len(seen_all) == n_train and full >= 0.9 * shard_bytes(ds)
    select = data.selection(ds, n=n_train // 10, seed=3)
    part, seen = epoch_bytes(ds, select)
    assert sorted(seen) == sorted(np.flatnonzero(select.mask(0)).tolist())      # exactly the subset
    assert part < 0.25 * full, (part, full)


def test_a_balanced_epoch_reads_only_its_draw(big_shards):
    ds = data.resolve([str(big_shards)])
    select = data.selection(ds, balance=40, seed=0, noise=data.noise_table(ds, "none", "", 0))
    for epoch in (0, 1):
        got, seen = epoch_bytes(ds, select, epoch)
        assert sorted(seen) == sorted(np.flatnonzero(select.mask(epoch)).tolist()) and len(seen) == 40
        assert got < 0.25 * shard_bytes(ds), (epoch, got)


def test_iter_tar_skips_unwanted_members_seekable_or_not(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("a.jpg", "a.cls", "b.jpg", "b.cls", "x" * 120 + ".cls"):
            data = name.encode() * 50
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()

    class Unseekable(io.RawIOBase):
        def __init__(self):
            self.inner = io.BytesIO(raw)

        def readable(self):
            return True

        def readinto(self, b):
            chunk = self.inner.read(len(b))
            b[:len(chunk)] = chunk
            return len(chunk)

    want = lambda name: not name.startswith("a.")  # noqa: E731
    for stream in (io.BytesIO(raw), io.BufferedReader(Unseekable())):
        got = dict(iter_tar(stream, want))
        assert list(got) == ["b.jpg", "b.cls", "x" * 120 + ".cls"]
        assert all(v == k.encode() * 50 for k, v in got.items())


def test_a_mid_epoch_resume_decodes_none_of_the_batches_it_passes_over(big_shards, monkeypatch):
    """--save-every's position {worker: batches}: the resumed epoch passes over those batches
    as parsed samples and decodes only what it trains on."""
    from pipeline import cpu
    ds = data.resolve([str(big_shards)])
    calls = [0]
    real = cpu.checked_image

    def counting(body):
        calls[0] += 1
        return real(body)
    monkeypatch.setattr(cpu, "checked_image", counting)
    ld = data.build_loaders(ds, data.spec_from_card(ds.card), batch_size=16, workers=0, seed=0,
                            noise=data.noise_table(ds, "none", "", 0), keep=None)["train"]
    full = [i for b in ld(0) if len(b) for i in b.index.tolist()]
    decoded_full, calls[0] = calls[0], 0
    rest = [i for b in ld(0, start={0: 5}) if len(b) for i in b.index.tolist()]
    assert decoded_full == len(full) and rest == full[5 * 16:]
    assert calls[0] == len(full) - 5 * 16


@pytest.fixture(scope="module")
def tiny_shards(tmp_path_factory):
    """1,000 8x8 PNGs (~100 bytes each): here a sample's four 512-byte headers outweigh its
    data, the case of Clothing1M's small JPEGs at 10^6 (issue 16: 2 GB of headers an epoch)."""
    return noise_png_shards(tmp_path_factory.mktemp("tiny"), 1000, 8, "t", 250, "0")


def test_a_subset_of_small_samples_reads_through_the_index(tiny_shards):
    ds = data.resolve([str(tiny_shards)])
    full, _ = epoch_bytes(ds, None)
    select = data.selection(ds, n=100, seed=1)
    part, seen = epoch_bytes(ds, select)
    assert sorted(seen) == sorted(np.flatnonzero(select.mask(0)).tolist())
    # headers of every sample alone would be ~4 x 512 x 1000 bytes, more than 0.6 x full
    assert part < 0.25 * full, (part, full)


def _read(url, keys):
    from pipeline.cpu import read_tars
    skips = []
    got = [s["__key__"] for s in read_tars([url], skips, {url.rsplit("/", 1)[-1]: frozenset(keys)})]
    return got, skips


def test_a_damaged_or_stale_index_never_gives_other_bytes(tiny_shards, tmp_path):
    import shutil
    for f in ("t-000.tar", "t-000.idx"):
        shutil.copy(tiny_shards / f, tmp_path / f)
    url = str(tmp_path / "t-000.tar")
    lines = (tmp_path / "t-000.idx").read_text().split("\n")
    keys = [ln.split(" ")[3].split(".")[0] for ln in lines[1:4]]
    assert _read(url, keys) == (keys, [])
    # malformed (a count that does not match): read by the headers, same samples
    (tmp_path / "t-000.idx").write_text("v1.2 7\n" + "\n".join(lines[1:]))
    assert _read(url, keys) == (keys, [])
    # stale: two samples' lines swapped, offsets kept in order -> names no longer match
    a, b = lines[1].split(" "), lines[2].split(" ")
    swapped = [" ".join(b[i] if i % 4 == 3 else a[i] for i in range(len(a))),
               " ".join(a[i] if i % 4 == 3 else b[i] for i in range(len(b)))]
    (tmp_path / "t-000.idx").write_text("\n".join([lines[0], *swapped, *lines[3:]]))
    got, skips = _read(url, keys[:2])
    assert got == [] and len(skips) == 1 and ".idx does not match its tar" in skips[0][2]
