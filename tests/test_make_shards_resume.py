"""tools/make_shards.py resumed after a kill, and split over machines with --part/--merge: the
output must be byte-identical to one uninterrupted run (tars, .idx, card, manifest)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.convert import jobs, outputs, progress, run as conversion
from tools import make_shards
from tests.shardcheck import assert_one_line_error, make_clothing1m, read_back, run

ROOT = Path(__file__).resolve().parents[1]


class Killed(BaseException):
    """Stands for a SIGKILL inside the process: nothing catches it, no cleanup runs."""


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "clothing1m"
    make_clothing1m(src, annotations=False)
    (src / "images/0/00/12345678.jpg").write_bytes(b"")   # train[5]: a skip, and with shard size 1
    return src                                             # an empty shard that is renumbered away


def argv(src, out, *extra):
    return ["clothing1m", src, "--out", out, "--name", "c1m", "--shard-size", "2", *extra]


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file under `out`, byte for byte (the card records neither --out nor --workers)."""
    files = {}
    for p in sorted(out.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.name == "c1m.json":
                assert not {"out", "workers"} & set(json.loads(data)["options"])
            files[str(p.relative_to(out))] = data
    return files


@pytest.fixture
def reference(tmp_path, source, capsys):
    """The uninterrupted run per shard size."""
    def make(*extra):
        out = tmp_path / ("ref" + "".join(extra))
        if not out.exists():
            rc, _, err = run(argv(source, out, *extra), capsys)
            assert rc == 0, err
        return snapshot(out)
    return make


# ---------------------------------------------------------------------------- resume

def test_a_sigkilled_conversion_resumes_to_the_same_bytes(tmp_path, source, reference, capsys):
    """A real SIGKILL after the k-th shard appears (write_tar slowed down so the kill lands
    inside the run), then the same command again."""
    want = reference("--shard-size", "1")
    slow = ("import sys, time; import pipeline.convert.jobs as j; import tools.make_shards as m\n"
            "real = j.write_tar\ndef write_tar(*a):\n    time.sleep(0.15); return real(*a)\n"
            "j.write_tar = write_tar; sys.exit(m.main(sys.argv[1:]))")
    for k, workers in ((1, 1), (6, 2), (12, 1)):
        out = tmp_path / f"killed{k}"
        cmd = [str(a) for a in argv(source, out, "--shard-size", "1", "--workers", workers)]
        proc = subprocess.Popen([sys.executable, "-c", slow, *cmd], cwd=ROOT, stderr=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.time() + 60
        while len(list(out.glob("*.tar"))) < k and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        kids = _children(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert len(kids) == (workers if workers > 1 else 0)
        deadline = time.time() + 5       # its workers die with it (PR_SET_PDEATHSIG): none left writing
        while [c for c in kids if _alive(c)] and time.time() < deadline:
            time.sleep(0.02)
        assert not [c for c in kids if _alive(c)]
        assert (out / "c1m.partial" / "plan.json").exists() and not (out / "c1m.json").exists()
        rc, _, err = run(cmd, capsys)
        assert rc == 0, err
        kept = re.search(r"resuming: ([0-9]+) of 16 shard", err)      # absent: none complete yet
        assert (int(kept.group(1)) if kept else 0) >= k - 1, err   # the complete are not written again
        assert snapshot(out) == want, k


@pytest.mark.parametrize("where", ["record", "manifest", "stale", "cleanup"])
def test_a_kill_at_each_step_resumes_to_the_same_bytes(tmp_path, source, reference, capsys, monkeypatch, where):
    """Killed between a shard's rename and its record, after empty shards were renumbered
    (before the manifest), after the card (before stale shards go), before NAME.partial goes."""
    want = reference("--shard-size", "1")
    out = tmp_path / "out"
    calls = [0]

    def die(real, after=0):
        def f(*a, **k):
            calls[0] += 1
            if calls[0] > after:
                raise Killed()
            return real(*a, **k)
        return f
    target = {"record": (jobs, "write_json_atomic", 4), "manifest": (outputs, "write_manifest", 0),
              "stale": (conversion, "remove_stale_shards", 0)}.get(where)
    if target:
        monkeypatch.setattr(target[0], target[1], die(getattr(target[0], target[1]), target[2]))
    else:
        monkeypatch.setattr(progress.Progress, "remove", die(progress.Progress.remove))
    with pytest.raises(Killed):
        make_shards.main([str(a) for a in argv(source, out, "--shard-size", "1", "--workers", "1")])
    monkeypatch.undo()
    rc, _, err = run(argv(source, out, "--shard-size", "1", "--workers", "2"), capsys)
    assert rc == 0, err
    assert snapshot(out) == want
    read_back(out, "c1m", tmp_path)


def test_a_resume_refuses_other_inputs_or_options(tmp_path, source, capsys, monkeypatch):
    out = tmp_path / "out"
    real = jobs.write_shard
    calls = [0]

    def dies_on_the_third(job):
        calls[0] += 1
        if calls[0] == 3:
            raise Killed()
        return real(job)
    monkeypatch.setattr(jobs, "write_shard", dies_on_the_third)
    with pytest.raises(Killed):
        make_shards.main([str(a) for a in argv(source, out)])
    monkeypatch.undo()
    rc, _, err = run(argv(source, out, "--resize", "200"), capsys)
    assert_one_line_error(rc, err, "c1m.partial", "other inputs or options")
    kv = source / "noisy_label_kv.txt"                      # one label changed in the source
    lines = kv.read_text().split("\n")
    path, label = lines[0].split()
    kv.write_text("\n".join([f"{path} {(int(label) + 1) % 14}", *lines[1:]]))
    rc, _, err = run(argv(source, out), capsys)
    assert_one_line_error(rc, err, "other inputs or options")
    kv.write_text("\n".join(lines))                          # back as it was: resumes
    rc, _, err = run(argv(source, out), capsys)
    assert rc == 0 and "resuming: 2 of" in err, err
    # a finished conversion is no partial one: other options convert afresh, as before
    rc, _, err = run(argv(source, out, "--resize", "200"), capsys)
    assert rc == 0, err
    assert not (out / "c1m.partial").exists()


# ---------------------------------------------------------------------------- --part / --merge

@pytest.mark.parametrize("n", [2, 3])
def test_parts_and_merge_equal_one_run(tmp_path, source, reference, capsys, n):
    want = reference()
    out = tmp_path / "parts"
    for i in range(1, n + 1):
        rc, stdout, err = run(argv(source, out, "--part", f"{i}/{n}"), capsys)
        assert rc == 0, err
        assert f"part {i}/{n}" in stdout and not (out / "c1m.json").exists()
        assert (out / "c1m.partial" / f"part-{i}-of-{n}.json").exists()
    mine = json.loads((out / "c1m.partial" / f"part-1-of-{n}.json").read_text())["shards"]
    assert [s["file"] for s in mine][:2] == ["c1m-000.tar", f"c1m-00{n}.tar"]      # shard j: part j % N + 1
    rc, _, err = run(argv(source, out, "--merge"), capsys)
    assert rc == 0, err
    assert snapshot(out) == want
    read_back(out, "c1m", tmp_path)


def test_merge_names_the_missing_parts(tmp_path, source, capsys):
    out = tmp_path / "parts"
    rc, _, err = run(argv(source, out, "--merge"), capsys)
    assert_one_line_error(rc, err, "--merge", "nothing to merge")
    for i in (1, 3):
        rc, _, err = run(argv(source, out, "--part", f"{i}/3"), capsys)
        assert rc == 0, err
    rc, _, err = run(argv(source, out, "--merge"), capsys)
    assert_one_line_error(rc, err, "part(s) 2/3 not complete", "c1m-001.tar")
    assert not (out / "c1m.json").exists()
    rc, _, err = run(argv(source, out, "--part", "2/3"), capsys)
    assert rc == 0, err
    rc, _, err = run(argv(source, out, "--merge"), capsys)
    assert rc == 0, err


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b"])
def test_bad_part_exits_2(tmp_path, source, capsys, bad):
    with pytest.raises(SystemExit) as e:
        make_shards.main([str(a) for a in argv(source, tmp_path / "o", "--part", bad)])
    assert e.value.code == 2 and "--part" in capsys.readouterr().err
