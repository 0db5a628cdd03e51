"""The conversion's plan: which record goes to which shard and under which global index,
fixed before any work starts, and the fingerprint that lets a rerun resume it."""
import hashlib
import itertools
import json
import os
from dataclasses import dataclass

import numpy as np

from pipeline import fixes as label_fixes, shardset
from pipeline.convert import sources
from pipeline.convert.columns import CHUNK, Records


@dataclass
class Plan:
    """Which record goes to which shard, fixed before any work starts. splits: split ->
    (records [(key, label, clean, source)], global indices as int64); jobs: one dict per shard
    {split, file, start, stop} into its split's records. Compact on purpose: no per-sample
    object beyond the source's own records (the plan of 10^6 samples is one int64 array)."""
    splits: dict
    jobs: list[dict]
    num_indices: int


def plan(src: sources.Source, args, fixes=None) -> Plan:
    """Global indices (train, then val, then test) and the shard each record goes to. Label
    fixes relabel records and leave dropped ones out; indices are those of the unfixed plan,
    so a fixes file written from an earlier conversion's manifest names the same samples."""
    splits, jobs, base = {}, [], 0
    for split in sources.SPLITS:
        recs = src.splits.get(split, Records.from_tuples([]))
        index = np.arange(base, base + len(recs), dtype=np.int64)
        base += len(recs)
        if fixes is not None:
            recs, index = apply_fixes(recs, index, fixes)
        splits[split] = (recs, index)
        for start in range(0, len(recs), args.shard_size):
            jobs.append({"split": split, "file": shardset.shard_file(args.name, split, start // args.shard_size),
                         "start": start, "stop": min(start + args.shard_size, len(recs))})
    return Plan(splits, jobs, base)


def apply_fixes(recs: Records, index: np.ndarray, fixes) -> tuple[Records, np.ndarray]:
    """Relabelled records and the dropped ones left out; index: the records' global indices."""
    labels = recs.labels.copy()
    for g, label in fixes.relabel.items():
        at = np.searchsorted(index, g)                  # index is sorted: one split's range
        if at < len(index) and index[at] == g:
            labels[at] = label
    keep = np.flatnonzero(~np.isin(index, np.fromiter(fixes.drop, np.int64, len(fixes.drop))))
    return recs.with_labels(labels).take(keep), index[keep]


def job_records(p: Plan, job: dict) -> list[tuple]:
    """(key, label, clean, index, source) of one shard, built when the shard is sent to a worker."""
    recs, index = p.splits[job["split"]]
    part = recs[job["start"]:job["stop"]]
    return [(key, label, clean, int(g), source)
            for (key, label, clean, source), g in zip(part, index[job["start"]:job["stop"]])]


def read_label_fixes(src: sources.Source, args):
    """The --label-fixes file against this conversion's keys and global indices (the unfixed
    plan's: train, then val, then test)."""
    if not args.label_fixes:
        return None
    keys, base = {}, 0
    for split in sources.SPLITS:
        recs = src.splits.get(split, Records.from_tuples([]))
        keys.update(zip(recs.keys.to_pylist(), range(base, base + len(recs))))
        base += len(recs)
    return label_fixes.read_fixes(args.label_fixes, keys, base, src.classes)


def fingerprint(p: Plan, args, fixes) -> str:
    """SHA-256 of what decides the output bytes: the options (not --workers, --part, --merge)
    and, per record, split, index, key, labels, source and the file's size. Sizes, not
    contents: a stat per file is cheap (0.65 s for 10^5 files, measured), reading them is the
    conversion itself."""
    h = hashlib.sha256(json.dumps(card_options(args, for_fingerprint=True), sort_keys=True).encode())
    h.update((fixes.sha256 if fixes else "").encode())
    for split, (recs, index) in p.splits.items():
        # the indices a chunk at a time: index.tolist() at once is ~36 MB of ints at 10^6
        indices = itertools.chain.from_iterable(index[s:s + CHUNK].tolist() for s in range(0, len(index), CHUNK))
        for (key, label, clean, source), g in zip(recs, indices):
            if isinstance(source, np.ndarray):
                size = hashlib.sha256(source.tobytes()).hexdigest()
            else:
                try:
                    size = os.stat(source).st_size
                except OSError:
                    size = -1                       # unreadable: a skip, decided in the worker
            path = source if isinstance(source, str) else ""
            h.update(f"{split}\t{g}\t{key}\t{label}\t{clean}\t{path}\t{size}\n".encode())
    return h.hexdigest()


def card_options(args, for_fingerprint: bool = False) -> dict:
    """The options written to the card: how the set was made, not where or by how many
    processes. --part, --merge and --workers spread the work (the bytes are the same for any of
    them) and --out is a folder of the machine that wrote it, which a card moved or shared must
    not name, so the card is byte-identical across them; the resume fingerprint keeps --out as
    it always did. --label-fixes only when given, so cards of conversions without it keep their
    bytes."""
    skip = {"part", "merge", "workers"} | (set() if for_fingerprint else {"out"})
    if not args.label_fixes:
        skip.add("label_fixes")
    return {k: str(v) for k, v in sorted(vars(args).items()) if k not in skip}
