"""The reference the shard tests check the writer's DALI index against is independent of the
writer: DALI's own wds2idx, or GNU tar's listing; both agree where both exist."""
import builtins

from tests import shardcheck
from tests.shardkit import make_digit_shards


def test_the_tar_listing_reference_matches_the_written_index(tmp_path, monkeypatch):
    shards = make_digit_shards(tmp_path, n_train=120, n_test=20, shard_size=50)
    real_import = builtins.__import__

    def no_dali(name, *args, **kw):
        if name == "wds2idx":
            raise ImportError(name)
        return real_import(name, *args, **kw)

    tar = shards / "digits-000.tar"
    with_dali = None
    try:
        with_dali = shardcheck.reference_idx(tar, tmp_path)
    except Exception:  # noqa: BLE001  (no wds2idx here: compared with the writer alone)
        pass
    monkeypatch.setattr(builtins, "__import__", no_dali)
    listing = shardcheck.reference_idx(tar, tmp_path)
    assert listing == tar.with_suffix(".idx").read_text()
    if with_dali is not None:
        assert listing == with_dali
    assert len(listing.splitlines()) == 51 and listing.startswith("v1.2 50\n")
