"""The package's one-way flow, checked on the import graph: drawing never imports running.

Subpackages sit on floors: the base modules (errors, images, data), ``models``, ``maps``,
``viz``, ``jobs``, ``train``, then the notebook and app support, then the CLI. A module may
import modules of its own floor or below only, so no import runs upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vtviz"
#: each subpackage's floor band, in order: a package never imports one further down this list
PACKAGES = {"": 0, "models": 10, "maps": 20, "viz": 30, "jobs": 40, "train": 50, "app": 60}
#: floor of each module (dotted, under vtviz)
LAYERS = {
    "errors": 0, "runtime": 0, "indices": 0, "files": 0, "foreign": 0, "preprocess": 0, "image": 1, "data": 2,
    "models": 10, "models.vt": 10, "models.teacher": 10, "models.meta": 11, "models.lite": 11,
    "models.ood": 12, "models.registry": 12, "models.checkpoint": 13,
    "maps": 20, "maps.thresholds": 20, "maps.tokens": 21, "maps.diagnostics": 22, "maps.explain": 22,
    "maps.faithful": 23,
    "viz": 30, "viz.codecs": 30, "viz.colors": 30, "viz.contours": 31, "viz.heatmap": 32, "viz.layout": 33,
    "viz.views": 34,
    "jobs": 40, "jobs.runner": 40, "jobs.workers": 40, "jobs.export": 41, "jobs.gallery": 41, "jobs.evaluate": 41,
    "jobs.evaluate_maps": 41,
    "train": 50, "train.config": 50, "train.regularisers": 50, "train.kd": 50, "train.dev": 50,
    "train.loop": 51, "train.distill": 52,
    "analysis": 60, "app": 60, "app.session": 60,
    "cli": 70, "__init__": 70, "__main__": 70,
}


def _module(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, no flow at run time)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path) -> set[str]:
    """vtviz modules imported by ``path`` at run time (dotted under vtviz; a subpackage counts
    as itself)."""
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vtviz"):
            base = node.module.removeprefix("vtviz").lstrip(".")
            for alias in node.names:
                sub = f"{base}.{alias.name}".lstrip(".")
                out.add(sub if sub in LAYERS else base)
        elif isinstance(node, ast.Import):
            out |= {a.name.removeprefix("vtviz.") for a in node.names if a.name.startswith("vtviz.")}
    return out - {""}


MODULES = {_module(p): p for p in sorted(PKG.rglob("*.py"))}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_only_go_down(module):
    for imported in _imports(MODULES[module]):
        assert imported in LAYERS, f"{module} imports vtviz.{imported}, which has no floor"
        assert LAYERS[imported] <= LAYERS[module], f"{module} (floor {LAYERS[module]}) imports {imported}"


def test_every_module_has_a_floor_in_its_package_band():
    assert set(MODULES) == set(LAYERS)
    bands = sorted(PACKAGES.values())
    for module, floor in LAYERS.items():
        package = module.split(".")[0] if "." in module or module in PACKAGES else ""
        low = PACKAGES[package]
        high = min([b for b in bands if b > low] or [100])
        assert low <= floor < high or package == "", f"{module}: floor {floor} outside {package}'s band"


def test_no_relative_imports():
    """Absolute imports only: each names the subpackage it crosses into."""
    for module, path in MODULES.items():
        rel = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.level]
        assert not rel, f"{module}: relative import"
