"""make_shards --out s3://bucket/prefix (or gs://): a conversion written to a bucket through
fsspec (pipeline/remote.py), never through a shell.

How: the shards are written by the same writer as a local conversion, into a local staging
folder (a fresh temporary folder that holds at most the shards in flight, about two per
worker, and is removed at the end). Each finished shard is uploaded, its tar, then its `.idx`,
then its record `NAME.partial/shards/FILE.json` in the bucket, and its local files are deleted.
At the end the manifest and, last, the card are uploaded, NAME's shards of an older conversion
in the prefix are deleted (those the new card does not list) and so is `NAME.partial/`. Every
object is uploaded only once its local file is complete, under its final key, and an S3 PUT
(multipart included) is atomic, so a key never holds a half-written object. The objects are
byte-identical to the files of a local conversion with the same options (the card names
neither --out nor the staging folder).

Resume: as a local conversion's NAME.partial/ (pipeline/convert/progress.py), but in the bucket:
`plan.json` holds the plan's fingerprint, and each shard's record adds the sizes of its tar and
`.idx` as uploaded. A rerun of the same command keeps each shard whose record is there and
whose tar and `.idx` in the bucket have the recorded sizes, and writes and uploads the rest
(stderr: `resuming: K of M shard(s) already complete`); a NAME.partial/ of other inputs or
options is refused. `--part I/N` and `--merge` work the same way from several machines sharing
the bucket."""
import json
import re
from pathlib import Path

from pipeline import remote, safe_io, shardset
from pipeline.convert import sources
from pipeline.convert.outputs import as_card, stale_files
from pipeline.convert.progress import MAX_RECORD, check_record
from pipeline.shards import MAX_CARD, DataError


class BucketOut:
    """--out in a bucket: the progress bookkeeping (the methods of progress.Progress) and the
    uploads. `dir` is the local NAME.partial/ where the workers write each shard's record."""

    def __init__(self, url: str, name: str, staging: Path):
        self.url, self.name, self.staging = url.rstrip("/"), name, Path(staging)
        self.partial = remote.join(self.url, f"{name}.partial")
        self.dir = self.staging / f"{name}.partial"
        self.objects: dict[str, int] = {}       # name -> size in the prefix, listed once at open
        self.records: set[str] = set()          # record names in the bucket's NAME.partial/shards/

    # ---- the progress bookkeeping, in the bucket ----
    def open(self, fp: str, must_exist: bool) -> bool:
        """True when resuming. Refuses (DataError) another conversion's unfinished output."""
        safe_io.out_dir(safe_io.out_dir(self.dir, "staging folder") / "shards", "staging folder")
        raw = remote.read_capped(remote.join(self.partial, "plan.json"), 1 << 20, "plan")
        if raw is not None:
            try:
                old = json.loads(raw).get("fingerprint")
            except (ValueError, AttributeError):
                old = None
            if old != fp:
                raise DataError(f"{self.partial}/ holds an unfinished conversion of other inputs or options: "
                                "rerun that command to finish it, or delete it to start over")
            self.objects = remote.sizes(self.url)
            self.records = set(remote.sizes(remote.join(self.partial, "shards")))
            return True
        if must_exist:
            raise DataError(f"--merge: nothing to merge in {self.url} "
                            f"(no {self.name}.partial/: run the --part commands first)")
        self._put_json("plan.json", {"fingerprint": fp})
        return False

    def done_shard(self, job: dict) -> dict | None:
        """The shard's record when its record is in the bucket and its tar and .idx there have
        the sizes it records (an empty shard has none: it is dropped at the end), else None."""
        if f"{job['file']}.json" not in self.records:
            return None
        try:
            rec = json.loads(remote.read_capped(self._record_url(job["file"]), MAX_RECORD, "record") or b"null")
        except ValueError:
            return None
        if not check_record(rec, job):
            return None                           # damaged: the shard is written again
        if rec["count"] == 0:
            return rec
        sizes = (self.objects.get(job["file"]), self.objects.get(shardset.index_path(job["file"])))
        return rec if sizes == (rec.get("tar_size"), rec.get("idx_size")) else None

    def write_part(self, part: int, n: int, recs: list[dict]) -> str:
        file = f"part-{part}-of-{n}.json"
        self._put_json(file, {"part": part, "of": n, "shards": [
            {k: r[k] for k in ("file", "split", "count")} | {"skipped": len(r["skipped"])} for r in recs]})
        return remote.join(self.partial, file)

    def parts_of(self) -> int | None:
        ns = {int(m.group(1)) for f in remote.sizes(self.partial) if (m := re.fullmatch(r"part-\d+-of-(\d+)\.json", f))}
        return ns.pop() if len(ns) == 1 else None

    def remove(self) -> None:
        remote.remove_tree(self.partial)

    # ---- uploads ----
    def publish(self, rec: dict) -> None:
        """A shard the writer finished in the staging folder: its tar, its .idx, then its record
        (which names a complete shard, so it goes last) to the bucket; its local files deleted.
        An empty shard (every image unreadable) uploads its record only."""
        tar = self.staging / rec["file"]
        idx = shardset.index_path(tar)
        sizes = {}
        if rec["count"]:
            remote.upload(tar, remote.join(self.url, tar.name))
            remote.upload(idx, remote.join(self.url, idx.name))
            sizes = {"tar_size": tar.stat().st_size, "idx_size": idx.stat().st_size}
        self._put_json(f"shards/{rec['file']}.json", {**rec, **sizes})
        for f in (tar, idx, self.dir / "shards" / f"{rec['file']}.json"):
            f.unlink(missing_ok=True)

    def upload_final(self, local: Path) -> None:
        """The manifest, then the card: complete local files, each put under its final key."""
        remote.upload(local, remote.join(self.url, local.name))

    def drop_empty_shards(self, results: list[dict]) -> list[dict]:
        """outputs.drop_empty_shards in the bucket: empty shards were never uploaded, and a
        split's later shards are renamed down (a server-side copy, then the old key deleted) so
        that names stay contiguous. The records of every shard involved are deleted first: a
        kill from then on leaves those shards to be written again by the rerun, never a record
        that names what another shard's copy now holds."""
        moves = []
        for split in sources.SPLITS:
            mine = [r for r in results if r["split"] == split]
            if all(r["count"] for r in mine):
                continue
            for i, r in enumerate([k for k in mine if k["count"]]):
                if (new := shardset.renumbered(r["file"], i)) != r["file"]:
                    moves.append((r, new))
        remote.remove([self._record_url(f) for r, new in moves for f in (r["file"], new)])
        for r, new in moves:                  # in order: a target's own shard has moved already
            for old, dest in ((r["file"], new), (shardset.index_path(r["file"]), shardset.index_path(new))):
                remote.copy(remote.join(self.url, old), remote.join(self.url, dest))
                remote.remove([remote.join(self.url, old)])
            r["file"] = new
        return [r for r in results if r["count"]]

    def remove_stale_shards(self, card: dict) -> list[str]:
        """outputs.remove_stale_shards in the bucket prefix: NAME's tars and indexes that the new
        card and no other card in the prefix list. After the card is uploaded."""
        files = remote.sizes(self.url)
        others = [as_card(remote.read_capped(remote.join(self.url, f), MAX_CARD, "card"))
                  for f in files if f.endswith(".json") and f != f"{self.name}.json"]
        stale = stale_files(list(files), self.name, card, others)
        remote.remove([remote.join(self.url, f) for f in stale])
        return stale

    def _put_json(self, file: str, obj) -> None:
        remote.put_bytes(remote.join(self.partial, file), (json.dumps(obj, indent=1) + "\n").encode())

    def _record_url(self, file: str) -> str:
        return remote.join(self.partial, f"shards/{file}.json")
