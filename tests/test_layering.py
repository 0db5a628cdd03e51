"""One-way imports (docs/architecture.md section 3): pipeline imports neither models nor train
nor tools; models imports neither pipeline nor train nor tools; train imports no tool (so never
review); conversion (pipeline/convert/) imports no training and no review, and the readers of
pipeline/ never import conversion; review (tools/review/) imports no entry script. tools/ holds
entry points and benchmarks only: its library code lives in tools/review/. Scripts in train/
and tools/ shadow no module."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# (folder, forbidden imports as dotted prefixes, sub-folders the rule leaves to their own rule)
RULES = [
    ("pipeline", ("models", "train", "tools", "pipeline.convert"), ("convert",)),
    ("pipeline/convert", ("models", "train", "tools"), ()),
    ("models", ("pipeline", "train", "tools"), ()),
    ("train", ("tools",), ()),
]
# tools/ itself: entry points (a `main` or `cli`, run as `python tools/NAME.py`) and benchmarks
# (bench_*.py); everything else that tools/ needs lives in a package named for its job
ENTRY_MARK = 'if __name__ == "__main__":'


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def forbidden(names: set[str], prefixes: tuple) -> set[str]:
    return {n for n in names for p in prefixes if n == p or n.startswith(p + ".")}


def files(folder: str, skip: tuple = ()) -> list[Path]:
    base = ROOT / folder
    return [p for p in base.rglob("*.py") if not any(p.is_relative_to(base / s) for s in skip)]


@pytest.mark.parametrize("folder, banned, skip", RULES, ids=[r[0] for r in RULES])
def test_layers_import_one_way(folder, banned, skip):
    for path in files(folder, skip):
        bad = forbidden(imported_modules(path), banned)
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_review_imports_no_entry_script():
    scripts = tuple(f"tools.{p.stem}" for p in (ROOT / "tools").glob("*.py") if p.stem != "__init__")
    for path in files("tools/review"):
        bad = forbidden(imported_modules(path), scripts)
        assert not bad, f"{path.relative_to(ROOT)} imports the entry script(s) {bad}"


def test_tools_holds_entry_points_and_benchmarks_only():
    for path in (ROOT / "tools").glob("*.py"):
        if path.stem == "__init__":
            continue
        assert path.stem.startswith("bench_") or ENTRY_MARK in path.read_text(), \
            f"{path.relative_to(ROOT)} is neither an entry point nor a benchmark: move it into a package"
    packages = {p.parent.name for p in (ROOT / "tools").glob("*/__init__.py")}
    assert packages == {"review"}, f"tools/ packages {packages}: library code belongs in a package named for its job"


@pytest.mark.parametrize("folder", ["train", "tools"])
def test_no_script_shadows_a_module(folder):
    stdlib = set(sys.stdlib_module_names) | {"torch", "timm", "webdataset", "accelerate", "numpy", "PIL"}
    clash = {p.stem for p in (ROOT / folder).glob("*.py")} & stdlib
    assert not clash, f"{folder}/ would shadow {clash} when run as a script"
