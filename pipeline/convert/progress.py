"""make_shards' resume and --part bookkeeping: NAME.partial/ in --out, which records each finished
shard so that a killed conversion, or N machines each writing a part, end in the same bytes as
one uninterrupted run (docs/architecture.md section 8)."""
import json
import re
from pathlib import Path

from pipeline import safe_io, shardset
from pipeline.shards import DataError

MAX_RECORD = 256 << 20       # a shard's record lists its skipped samples: ~200 bytes each


def write_json_atomic(path: Path, obj) -> None:
    """Through safe_io (a fresh name: --part runs on several machines may write the same file,
    and a shared --out may hold links); a function of its own so tests can kill a run here."""
    safe_io.write_json(path, obj)


def check_record(rec, job: dict) -> bool:
    """Whether a shard's record is what jobs.write_shard writes for `job`: read back into the
    card and the manifest, so a count as text or a malformed skip must not get that far."""
    def count(v):
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0
    return (isinstance(rec, dict) and rec.get("file") == job["file"] and rec.get("split") == job["split"]
            and count(rec.get("count")) and (rec["count"] == 0 or isinstance(rec.get("first"), str))
            and isinstance(rec.get("skipped"), list)
            and all(isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("key", "source", "reason"))
                    for s in rec["skipped"])
            and isinstance(rec.get("skipped_index"), list) and all(count(i) for i in rec["skipped_index"]))


def part_of(j: int, n: int) -> int:
    """Shard j (in plan order: train, val, test) belongs to part j % N + 1: every part gets
    a share of each split, and the assignment is a function of the plan alone."""
    return j % n + 1


class Progress:
    """NAME.partial/ in --out: plan.json (the fingerprint) and shards/FILE.json, one record
    per finished shard. A shard is complete when its record exists and its tar and .idx carry
    their final names and agree with the record (write_tar renames the tar after the .idx is
    in place; the record follows the rename), so a SIGKILL at any moment costs at most the
    shards being written. Removed once the card is written."""

    def __init__(self, out: Path, name: str):
        self.out, self.name = out, name
        self.dir = out / f"{name}.partial"

    def open(self, fp: str, must_exist: bool) -> bool:
        """True when resuming. Refuses (DataError) another conversion's unfinished output."""
        plan_file = self.dir / "plan.json"
        if self.dir.exists() or self.dir.is_symlink():
            safe_io.out_dir(self.dir, "progress folder")     # a link would move the records elsewhere
        if plan_file.exists():
            try:
                old = json.loads(safe_io.read_capped(plan_file, 1 << 20, "plan")).get("fingerprint")
            except (ValueError, AttributeError):    # DataError too: a pipe, a device, too large
                old = None
            if old != fp:
                raise DataError(f"{self.dir} holds an unfinished conversion of other inputs or options: "
                                "rerun that command to finish it, or delete the folder to start over")
            return True
        if must_exist:
            raise DataError(f"--merge: nothing to merge in {self.out} "
                            f"(no {self.dir.name}/: run the --part commands first)")
        safe_io.out_dir(safe_io.out_dir(self.dir, "progress folder") / "shards", "progress folder")
        write_json_atomic(plan_file, {"fingerprint": fp})
        return False

    def done_shard(self, job: dict) -> dict | None:
        """The shard's record when the shard is complete, else None. The .idx must agree with
        the record (sample count, first key): a kill after empty shards were dropped and later
        ones renamed (drop_empty_shards) leaves another shard's files under this name."""
        try:
            rec = json.loads(safe_io.read_capped(self.dir / "shards" / f"{job['file']}.json", MAX_RECORD, "record"))
            if not check_record(rec, job):
                return None                           # damaged: the shard is written again
            idx = safe_io.check_regular(shardset.index_path(self.out / job["file"]), MAX_RECORD, "index")
            with open(idx, encoding="utf-8") as f:
                index = shardset.parse_index(f.read(), strict=False)
            ok = ((self.out / job["file"]).is_file()
                  and index.version == "v1.2" and index.declared == rec["count"]
                  and index.keys()[:1] == ([rec["first"]] if rec["count"] else []))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return rec if ok else None

    def write_part(self, part: int, n: int, recs: list[dict]) -> Path:
        path = self.dir / f"part-{part}-of-{n}.json"
        write_json_atomic(path, {"part": part, "of": n, "shards": [
            {k: r[k] for k in ("file", "split", "count")} | {"skipped": len(r["skipped"])} for r in recs]})
        return path

    def parts_of(self) -> int | None:
        """N of the part-I-of-N.json records present (to name the parts of missing shards)."""
        ns = {int(m.group(1)) for p in self.dir.glob("part-*-of-*.json")
              if (m := re.fullmatch(r"part-\d+-of-(\d+)\.json", p.name))}
        return ns.pop() if len(ns) == 1 else None

    def remove(self) -> None:
        safe_io.remove(self.dir, missing_ok=True)


def check_merge(jobs: list[dict], done: dict, progress: Progress) -> None:
    """--merge: every shard of the plan (`jobs`) complete, or DataError naming the parts to rerun."""
    missing = [(n, j["file"]) for n, j in enumerate(jobs) if j["file"] not in done]
    if not missing:
        return
    n_parts = progress.parts_of()
    parts = sorted({part_of(n, n_parts) for n, _ in missing}) if n_parts else []
    which = f"part(s) {', '.join(f'{i}/{n_parts}' for i in parts)} not complete: " if parts else ""
    names = ", ".join(f for _, f in missing[:5]) + (" ..." if len(missing) > 5 else "")
    raise DataError(f"--merge: {which}{len(missing)} of {len(jobs)} shard(s) missing or incomplete ({names}); "
                    "rerun those --part commands")
