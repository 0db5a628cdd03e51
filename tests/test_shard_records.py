"""Issue 27 item 7 for make_shards: a --part progress record of the wrong shape (a count as
text, a malformed skip list) is never trusted (the shard is written again) instead of failing
after the card is written; the same --part run twice at once does not trip over the other's
temporary names."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.shardkit import make_digit_idx
from tools import make_shards

ROOT = Path(__file__).resolve().parents[1]


def argv(src, out, *extra):
    return ["mnist", str(src), "--out", str(out), "--name", "t", "--shard-size", "100", *extra]


@pytest.mark.parametrize("damage", [{"count": "100"}, {"skipped": 5}, {"skipped": [{"key": 1}]},
                                    {"skipped_index": ["x"]}])
def test_a_malformed_part_record_is_redone_not_trusted(tmp_path, capsys, damage):
    src = make_digit_idx(tmp_path / "idx", 200, 100)
    out = tmp_path / "out"
    assert make_shards.main(argv(src, out, "--part", "1/2")) == 0
    record = out / "t.partial" / "shards" / "t-000.tar.json"
    rec = json.loads(record.read_text())
    record.write_text(json.dumps({**rec, **damage}))
    assert make_shards.main(argv(src, out, "--part", "1/2")) == 0       # the shard is written again
    assert make_shards.main(argv(src, out, "--part", "2/2")) == 0
    assert make_shards.main(argv(src, out, "--merge")) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    card = json.loads((out / "t.json").read_text())
    assert all(isinstance(sp["count"], int) for sp in card["splits"].values())


def test_the_same_part_twice_at_once(tmp_path):
    src = make_digit_idx(tmp_path / "idx", 400, 100)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "make_shards.py"), *argv(src, out, "--part", "1/1", "--workers", "1")]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=300) == 0, p.stderr.read()
    assert make_shards.main(argv(src, out, "--merge")) == 0
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
