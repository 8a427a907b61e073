"""The package's one-way flow, checked on the import graph: drawing never imports running."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vtviz"
#: layer of each module: a module may import modules of its own layer or below only
LAYERS = {
    "errors": 0, "model": 0, "lite": 0, "teacher": 0, "meta": 0, "runtime": 0, "indices": 0, "foreign": 0,
    "thresholds": 0, "files": 0,
    "ood": 0, "image": 0, "checkpoint": 1, "maps": 1, "data": 1,
    "diagnostics": 2, "render": 2, "views": 2,
    "explain": 3, "gallery": 3, "session": 3, "evaluate": 3, "export": 3, "faithful": 3,
    "analysis": 4, "train": 4, "distill": 4, "mapeval": 4, "cli": 5, "__init__": 5, "__main__": 5,
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                out.add(node.module.split(".")[0])
            else:
                out |= {a.name for a in node.names}
    return out


@pytest.mark.parametrize("module", sorted(LAYERS))
def test_imports_only_go_down(module):
    for imported in _imports(PKG / f"{module}.py"):
        assert LAYERS[imported] <= LAYERS[module], f"{module} (layer {LAYERS[module]}) imports {imported}"


def test_every_module_has_a_layer():
    assert {p.stem for p in PKG.glob("*.py")} == set(LAYERS)
