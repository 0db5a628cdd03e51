"""What a review is worth (tools/review_study.py): which K samples a reviewer looks at, the
oracle's decisions on them written as the review page's CSV, and a real reviewer's file
measured against the clean labels."""
from pathlib import Path

import numpy as np

from pipeline.fixes import read_fixes
from pipeline.loader import manifest_keys, resolve
from train.runfolder import write_atomic


def pick(rows: dict, how: str, k: int, seed: int) -> np.ndarray:
    """Positions into `rows` (most suspicious first) of the K samples reviewed: `top` the K
    most suspicious; `balanced` the most suspicious of each predicted class in turn (a class's
    1st, then every class's 2nd, ...: what a reviewer working class by class on the page
    reviews; it needs no clean label); `random` K drawn with the seed."""
    n = len(rows["index"])
    if how == "top":
        return np.arange(min(k, n))
    if how == "balanced":
        cls = rows["predicted"]
        turn = np.empty(n, np.int64)                    # rank of each row inside its class
        for c in np.unique(cls):
            at = np.flatnonzero(cls == c)
            turn[at] = np.arange(len(at))
        return np.sort(np.lexsort((np.arange(n), turn))[:k])
    return np.sort(np.random.default_rng(seed).choice(len(rows["index"]), size=k, replace=False))


def oracle_fixes(rows: dict, picked: np.ndarray, out: Path) -> tuple[float, int]:
    """The review page's CSV for an oracle that knows the clean labels; (precision, fixed)."""
    wrong = rows["label"][picked] != rows["clean_label"][picked]
    lines = ["index,given,decision,new_label"]
    for i, w in zip(picked, wrong):
        lines.append(f"{rows['index'][i]},{rows['label'][i]},relabel,{rows['clean_label'][i]}" if w
                     else f"{rows['index'][i]},{rows['label'][i]},keep,")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, "\n".join(lines) + "\n")
    return float(wrong.mean()), int(wrong.sum())


def reviewer_stats(rows: dict, fixes: Path, shards: Path) -> tuple[int, float, int]:
    """K, precision and the number of labels a real reviewer's file set to the clean label."""
    ds = resolve([str(shards)])
    f = read_fixes(fixes, manifest_keys(ds), ds.card["num_indices"], ds.classes)
    pos = {int(ix): j for j, ix in enumerate(rows["index"])}
    decided = [pos[i] for i in (*f.relabel, *f.drop, *f.kept) if i in pos]
    wrong = rows["label"][decided] != rows["clean_label"][decided]
    fixed = sum(rows["clean_label"][pos[i]] == lab != rows["label"][pos[i]] for i, lab in f.relabel.items() if i in pos)
    return len(decided), float(wrong.mean()) if decided else 0.0, int(fixed)
