"""One-way data flow: pipeline imports neither models nor train; models imports neither
pipeline nor train; train imports no tool (docs/architecture.md section 3). Scripts in train/ and tools/
shadow no module."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {"pipeline": {"models", "train", "tools"}, "models": {"pipeline", "train", "tools"},
             "train": {"tools"}}


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_import_one_way(package):
    for path in (ROOT / package).glob("*.py"):
        bad = imported_packages(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


@pytest.mark.parametrize("folder", ["train", "tools"])
def test_no_script_shadows_a_module(folder):
    stdlib = set(sys.stdlib_module_names) | {"torch", "timm", "webdataset", "accelerate", "numpy", "PIL"}
    clash = {p.stem for p in (ROOT / folder).glob("*.py")} & stdlib
    assert not clash, f"{folder}/ would shadow {clash} when run as a script"
