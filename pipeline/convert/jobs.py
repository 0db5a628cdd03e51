"""Writing the planned shards: one job per shard, in this process or in a pool of workers that
die with their parent; at most two jobs per worker in flight."""
import collections
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.convert.images import encode_image
from pipeline.convert.plan import Plan, job_records
from pipeline.convert.progress import write_json_atomic
from pipeline.convert.writer import write_tar
from pipeline.progress import bar as progress_bar
from pipeline.records import encode_sample


def write_shard(job: dict) -> dict:
    """One shard: encode every record, skip the unreadable, write atomically, then its record
    in NAME.partial/ (after the tar's rename: a record names a complete shard, see done_shard)."""
    samples, skipped, skipped_index = [], [], []
    for key, label, clean, index, source in job["records"]:
        try:
            data, ext = encode_image(source, job["resize"], job["quality"])
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            skipped.append({"key": key, "source": str(source), "reason": f"{type(e).__name__}: {e}"})
            skipped_index.append(int(index))
            continue
        src = "" if isinstance(source, np.ndarray) else str(source)
        samples.append(encode_sample(key, data, ext, label, index, clean, src))
    write_tar(Path(job["out"]) / job["file"], samples)
    first = next(iter(samples[0])).split(".", 1)[0] if samples else None
    record = {"file": job["file"], "split": job["split"], "count": len(samples), "first": first,
              "skipped": skipped, "skipped_index": skipped_index}
    write_json_atomic(Path(job["work"]) / "shards" / f"{job['file']}.json", record)
    return record


def start_workers(workers: int) -> ProcessPoolExecutor | None:
    """The worker processes, started before the source is read: forked from a small parent,
    they do not carry the whole record list (copy-on-write pages get copied as soon as the
    garbage collector touches them), so a worker's memory does not grow with the dataset."""
    if workers < 2:
        return None
    pool = ProcessPoolExecutor(workers, initializer=die_with_parent)
    for f in [pool.submit(os.getpid) for _ in range(workers)]:   # one submit per idle-less worker
        f.result()
    return pool


def die_with_parent() -> None:
    """Worker start-up: a SIGKILLed make_shards must not leave workers writing shards that the
    rerun writes too (the same temporary names); Linux's PR_SET_PDEATHSIG kills them with it."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)      # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass                       # not Linux: an orphan stops after its shard (the queue is gone)


def run_jobs(p: Plan, todo: list[dict], args, work: Path, pool: ProcessPoolExecutor | None,
             done: int = 0, on_done=None) -> list[dict]:
    """Write the shards of `todo`; at most 2 per worker in flight, so the records of one shard
    exist only while it is written (no per-sample objects for the whole plan). on_done(record):
    called here, in the parent, as each shard is finished (--out s3://: its upload)."""
    # a bar on a terminal, a plain line per interval in a batch job's log (was: nothing there)
    bar = progress_bar(total=sum(j["stop"] - j["start"] for j in p.jobs), initial=done, unit="img", desc="shards")
    results = []

    def finished(rec: dict) -> dict:
        if on_done is not None:
            on_done(rec)
        return rec

    def job(j):
        return {"split": j["split"], "file": j["file"], "out": str(args.out), "work": str(work),
                "resize": args.resize, "quality": args.quality, "records": job_records(p, j)}
    try:
        if pool is None:
            for j in todo:
                results.append(finished(write_shard(job(j))))
                bar.update(j["stop"] - j["start"])
        else:
            pending = collections.deque()
            for j in todo:
                pending.append((j, pool.submit(write_shard, job(j))))
                while len(pending) >= 2 * args.workers or (pending and len(pending) == len(todo) - len(results)):
                    first, fut = pending.popleft()
                    results.append(finished(fut.result()))
                    bar.update(first["stop"] - first["start"])
    finally:
        bar.close()
    return results
