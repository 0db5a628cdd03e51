"""CSV that a spreadsheet opens as data, never as formulas (the OWASP "CSV injection" rule).

Class names are folder names and keys come from the source, so either may be
`=HYPERLINK(...)` or `@SUM(1+1)*cmd|' /C calc'!A0`; README tells users to open suspects.csv in
a spreadsheet. A text cell that starts with = + - @, a tab or a carriage return gets a leading
`'`, which spreadsheets show as text. So that --label-fixes reads every cell back unchanged
the rule is a bijection: a cell that already is quotes then such a character gets one more
quote, and `restore` takes exactly one off. The review page's Export CSV does the same
(tools/review/assets/review.js, `exportCsv`)."""
import csv
import io
import re
from pathlib import Path

from pipeline import safe_io

FORMULA_START = "=+-@\t\r"
_NEUTRALIZED = re.compile(r"'+[=+\-@\t\r]", re.DOTALL)


def neutralize(value):
    """A value as a CSV cell: text that a spreadsheet would evaluate gets a leading `'`;
    numbers and other text pass unchanged."""
    if isinstance(value, str) and (value[:1] in tuple(FORMULA_START) or _NEUTRALIZED.match(value)):
        return "'" + value
    return value


def restore(cell: str) -> str:
    """The value `neutralize` wrote as `cell`."""
    return cell[1:] if _NEUTRALIZED.match(cell) else cell


def write_csv(path, columns: list[str], rows) -> None:
    """rows (dicts) as a CSV file with a header, every text cell neutralized, written through
    safe_io (a fresh name, then a rename)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=columns, restval="", extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: neutralize(v) for k, v in row.items()})
    safe_io.write_text(path, buf.getvalue())


def append_row(path, columns: list[str], row: dict) -> None:
    """One row appended to a results table (its header first when the file is new), cells
    neutralized, through safe_io.open_append (no link followed)."""
    path = Path(path)
    new = not path.exists()
    safe_io.out_dir(path.parent, "results folder")
    with safe_io.open_append(path) as f:
        w = csv.DictWriter(f, columns)
        if new:
            w.writeheader()
        w.writerow({k: neutralize(v) for k, v in row.items()})
