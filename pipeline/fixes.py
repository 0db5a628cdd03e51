"""Label fixes: which training samples get a new label and which are left out, read from a
reviewer's file.

Accepted files (the format is told by the content, not the name):
  - the review page's CSV (tools/review_labels.py): key,index,given,decision,new_label with
    decision accept | relabel | keep | drop;
  - any table with a `key` or an `index` column and a `label` (or `new_label`) column, comma-
    or tab-separated; a label is a class name or a class number, "drop" leaves the sample out;
  - a Label Studio JSON export (the full "JSON" export, a list of tasks with `annotations`, or
    "JSON-MIN", a list of flat objects) of tasks written by review_labels --label-studio: the
    task's data names the sample (`index` and/or `key`), the annotation's single choice is a
    class name or "drop".

The file may come from anyone: it is parsed as text (csv, json) and nothing in it is ever
run; only a regular file within MAX_BYTES is opened (a FIFO would hang, /dev/zero fill the
memory). Any problem is a DataError of one line naming the file and the row (CSV line or task
number), never quoting the file's content (`--label-fixes /etc/shadow` must not print it).
A file that decides nothing (a dataset card or Label Studio's import file passed by mistake,
a header alone) is refused, and so are decisions on val or test samples and dropping every
train sample. CSV cells a spreadsheet would evaluate were written with a leading `'`
(pipeline/csv_cells.py) and are read back without it."""
import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline import safe_io
from pipeline.csv_cells import restore
from pipeline.shards import DataError

DROP = "drop"
# The drop choice when a class is itself named "drop" (Label Studio's choices are plain
# strings): review_labels writes this one then, and it always means drop.
DROP_CHOICE = "(drop)"
MAX_DIGITS = 18              # an index or class number; 5,000 digits trip Python's int-string limit
DECISIONS = ("accept", "relabel", "keep", DROP)
MAX_BYTES = 1 << 30          # a fixes file is a table of decisions; 1 GiB is ~20M rows
ID_COLUMNS = ("index", "key")
LABEL_COLUMNS = ("new_label", "label")


@dataclass(frozen=True)
class Fixes:
    """relabel: sample index -> new label; drop: indices left out of training; kept: indices a
    reviewer confirmed (their label is unchanged, counted for the record)."""
    relabel: dict[int, int]
    drop: frozenset[int]
    sha256: str
    path: str
    kept: frozenset[int] = field(default_factory=frozenset)

    @property
    def n_relabelled(self) -> int:
        return len(self.relabel)

    @property
    def n_dropped(self) -> int:
        return len(self.drop)

    @property
    def n_kept(self) -> int:
        return len(self.kept)


@dataclass
class _Context:
    """What every row is checked against, and the decisions so far (index -> (action, label,
    where it was first decided))."""
    path: str
    lookup: Callable[[str], int | None]
    n_indices: int
    classes: list[str]
    train: Callable[[int], bool] | None = None   # whether an index is a train sample; None: all are
    seen: dict = field(default_factory=dict)

    def fail(self, where: str, what: str):
        raise DataError(f"fixes file {self.path}, {where}: {what}")


def read_fixes(path, key_to_index, n_indices: int, class_names: list[str], train_indices=None) -> Fixes:
    """The decisions of a fixes file. key_to_index: {key: sample index} or a callable
    key -> index (None or KeyError when unknown); n_indices: indices are 0..n_indices-1;
    train_indices: the train split's indices (a set), when other splits share the index space."""
    path = Path(path)
    raw = safe_io.read_capped(path, MAX_BYTES, "fixes file")
    train = train_indices.__contains__ if train_indices is not None else None
    ctx = _Context(str(path), _lookup_of(key_to_index), int(n_indices), list(class_names), train)
    text = _decode(raw, ctx)
    if text.lstrip()[:1] in ("[", "{"):
        _read_label_studio(text, ctx)
    else:
        _read_table(text, ctx)
    fixes = _collect(ctx, hashlib.sha256(raw).hexdigest())
    if train_indices is not None and train_indices and fixes.drop >= set(train_indices):
        raise DataError(f"fixes file {path}: drops every train sample ({len(fixes.drop)}); nothing would be trained")
    return fixes


def _decode(raw: bytes, ctx: _Context) -> str:
    if b"\0" in raw:
        ctx.fail("byte " + str(raw.index(b"\0")), "holds a NUL byte (a binary file, not a table or JSON)")
    try:
        return raw.decode("utf-8-sig")          # -sig: spreadsheets save CSV with a BOM
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        ctx.fail(f"row {line}", "is not UTF-8 text")


def _lookup_of(key_to_index) -> Callable[[str], int | None]:
    if callable(key_to_index):
        def call(key):
            try:
                return key_to_index(key)
            except KeyError:
                return None
        return call
    return key_to_index.get


def _collect(ctx: _Context, sha: str) -> Fixes:
    if not ctx.seen:
        raise DataError(f"fixes file {ctx.path}: decides nothing (no row relabels, drops or confirms a sample: "
                        "a header alone, a dataset card, or Label Studio's import file instead of its export?)")
    relabel = {i: lab for i, (act, lab, _) in ctx.seen.items() if act == "relabel"}
    drop = frozenset(i for i, (act, _, _) in ctx.seen.items() if act == DROP)
    kept = frozenset(i for i, (act, _, _) in ctx.seen.items() if act == "keep")
    return Fixes(relabel=relabel, drop=drop, sha256=sha, path=ctx.path, kept=kept)


# ---- one decision ----

def _decide(ctx: _Context, where: str, index: int, action: str, label: int | None) -> None:
    """Record one row; the same sample decided twice must be decided the same way."""
    new = (action, label)
    old = ctx.seen.get(index)
    if old is not None and old[:2] != new:
        ctx.fail(where, f"sample {index} was already decided differently ({old[2]}: {_show(ctx, *old[:2])}; "
                        f"here: {_show(ctx, *new)})")
    if old is None:
        ctx.seen[index] = (action, label, where)


def _show(ctx: _Context, action: str, label: int | None) -> str:
    return action if label is None else f"{action} {ctx.classes[label]!r}"


def _sample(ctx: _Context, where: str, index_text, key) -> int:
    """The sample index a row names, from its index, its key, or both (which must agree)."""
    index = None
    if index_text not in (None, ""):
        index = _int(index_text)
        if index is None or not 0 <= index < ctx.n_indices:
            ctx.fail(where, f"the index is not a sample index (0..{ctx.n_indices - 1})")
    if key not in (None, ""):
        if not isinstance(key, str):
            ctx.fail(where, "the key is not text")
        found = ctx.lookup(key)
        if found is None:
            ctx.fail(where, "unknown key (not in the dataset's manifest)")
        if index is not None and int(found) != index:
            ctx.fail(where, f"the key is sample {found}, but the row says index {index}")
        index = int(found)
    if index is None:
        ctx.fail(where, "names no sample (empty key and index)")
    if ctx.train is not None and not ctx.train(index):
        ctx.fail(where, f"sample {index} is a val or test sample; fixes apply to train samples only")
    return index


def _int(v) -> int | None:
    """A JSON integer or a decimal string; never bool, float or anything int() would guess at."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().isdigit() and v.strip().isascii() and len(v.strip()) <= MAX_DIGITS:
        return int(v.strip())
    return None


def _label(ctx: _Context, where: str, text) -> int:
    """A class name (exact, then ignoring case and surrounding spaces) or a class number."""
    if not isinstance(text, str):
        text = str(text) if _int(text) is not None else None
        if text is None:
            ctx.fail(where, "the label is not a class name or number")
    if text in ctx.classes:
        return ctx.classes.index(text)
    folded = [i for i, c in enumerate(ctx.classes) if c.strip().casefold() == text.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    number = _int(text)
    if number is not None and number < len(ctx.classes):
        return number
    ctx.fail(where, f"the label is not one of the {len(ctx.classes)} classes "
                    f"({', '.join(ctx.classes[:5])}{', ...' if len(ctx.classes) > 5 else ''}) nor {drop_choice(ctx.classes)!r}")


def drop_choice(classes: list[str]) -> str:
    """The label that means "leave the sample out": "drop", or DROP_CHOICE when a class is
    named "drop" (then "drop" is that class)."""
    return DROP_CHOICE if any(c.strip().casefold() == DROP for c in classes) else DROP


def _action(ctx: _Context, where: str, decision: str | None, label_text) -> tuple[str, int | None]:
    """(relabel | keep | drop, label) from a row's decision (optional) and label."""
    decision = (decision or "").strip().lower() or None
    if decision is not None and decision not in DECISIONS:
        ctx.fail(where, f"the decision is not one of {', '.join(DECISIONS)}")
    is_drop = isinstance(label_text, str) and label_text.strip().lower() in (DROP_CHOICE, drop_choice(ctx.classes))
    if decision == DROP or (decision is None and is_drop):
        return DROP, None
    if decision == "keep":
        return "keep", None
    if label_text in (None, ""):
        ctx.fail(where, "has no label" + (f" for decision {decision!r}" if decision else ""))
    return "relabel", _label(ctx, where, label_text)


# ---- tables ----

def _read_table(text: str, ctx: _Context) -> None:
    first = text.split("\n", 1)[0]
    delimiter = "\t" if "\t" in first and "," not in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            ctx.fail("row 1", "the file is empty (expected a header such as key,label)")
        cols = _columns(ctx, [h.strip().lower() for h in header])
        for row in reader:
            if not any(c.strip() for c in row):
                continue                          # blank lines are not decisions
            where = f"row {reader.line_num}"
            if len(row) != len(header):
                ctx.fail(where, f"has {len(row)} fields, the header {len(header)}")
            get = lambda name: restore(row[cols[name]]) if name in cols else None  # noqa: E731
            index = _sample(ctx, where, get("index"), get("key"))
            _decide(ctx, where, index, *_action(ctx, where, get("decision"), get("label")))
    except csv.Error:
        ctx.fail(f"row {reader.line_num}", "is not valid CSV")


def _columns(ctx: _Context, header: list[str]) -> dict[str, int]:
    """{index, key, decision, label: position}, `new_label` read as the label."""
    cols = {}
    for name in ID_COLUMNS + ("decision",):
        if name in header:
            cols[name] = header.index(name)
    for name in LABEL_COLUMNS:
        if name in header:
            cols["label"] = header.index(name)
            break
    if not any(n in cols for n in ID_COLUMNS):
        ctx.fail("row 1", "the header has no 'key' or 'index' column (not a table of decisions?)")
    if "label" not in cols and "decision" not in cols:
        ctx.fail("row 1", "the header has no 'label' or 'new_label' column")
    return cols


# ---- Label Studio ----

def _read_label_studio(text: str, ctx: _Context) -> None:
    try:
        tasks = json.loads(text)
    except RecursionError:
        ctx.fail("task 1", "JSON nested too deep")
    except ValueError as e:
        ctx.fail(f"row {getattr(e, 'lineno', '?')}", f"is not valid JSON ({getattr(e, 'msg', e)})")
    if isinstance(tasks, dict):
        tasks = [tasks]                           # a single task exported on its own
    if not isinstance(tasks, list):
        ctx.fail("task 1", "a Label Studio export is a list of tasks")
    for n, task in enumerate(tasks, 1):
        where = f"task {n}"
        if not isinstance(task, dict):
            ctx.fail(where, f"is a {type(task).__name__}, not an object")
        data = task.get("data") if "data" in task else task
        if not isinstance(data, dict):
            ctx.fail(where, "'data' is not an object")
        choice = _task_choice(ctx, where, task)
        if choice is None:
            continue                              # not annotated (or only cancelled): no decision
        index = _sample(ctx, where, data.get("index"), data.get("key"))
        action, label = _action(ctx, where, None, choice)
        given = data.get("given")
        if action == "relabel" and isinstance(given, str) and given == ctx.classes[label]:
            action, label = "keep", None          # choosing the given class confirms it
        _decide(ctx, where, index, action, label)


def _task_choice(ctx: _Context, where: str, task: dict) -> str | None:
    """The task's one chosen value: from the annotations (full export; `completions` in old
    versions) or from the flat `label` field (JSON-MIN). Several annotators must agree."""
    if "data" not in task:
        return _single(ctx, where, task.get("label"))
    anns = task.get("annotations", task.get("completions")) or []
    if not isinstance(anns, list):
        ctx.fail(where, "'annotations' is not a list")
    picked = set()
    for a in anns:
        if not isinstance(a, dict):
            ctx.fail(where, "an annotation is not an object")
        if a.get("was_cancelled"):
            continue                              # skipped by the annotator: no decision
        choice = _result_choice(ctx, where, a.get("result") or [])
        if choice is not None:
            picked.add(choice)
    if len(picked) > 1:
        ctx.fail(where, "annotators disagree")
    return picked.pop() if picked else None


def _result_choice(ctx: _Context, where: str, result) -> str | None:
    if not isinstance(result, list):
        ctx.fail(where, "an annotation's 'result' is not a list")
    values = [r.get("value") for r in result if isinstance(r, dict) and r.get("type") == "choices"]
    if len(values) > 1:
        ctx.fail(where, "an annotation holds several choices results (expected one)")
    if not values:
        return None
    if not isinstance(values[0], dict):
        ctx.fail(where, "a choices result's 'value' is not an object")
    return _single(ctx, where, values[0].get("choices"))


def _single(ctx: _Context, where: str, value) -> str | None:
    """One chosen string from "x", ["x"] or {"choices": ["x"]} (JSON-MIN writes any of them)."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list):
        if len(value) > 1:
            ctx.fail(where, "several choices (one label per sample)")
        value = value[0] if value else None
    if value is None:
        return None
    if not isinstance(value, str):
        ctx.fail(where, "the choice is not text")
    return value
