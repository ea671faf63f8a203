"""The layers stay apart: the engine never imports the panel, the panel never imports torch & co,
and no module uses another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "core").glob("*.py"), *(ROOT / "ui").glob("*.py"), ROOT / "app.py"])
OUR = {"core", "ui", "app"}


def _imports(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_layers(path):
    top = {name.split(".")[0] for name in _imports(ast.parse(path.read_text(encoding="utf-8")))}
    if path.parent.name == "core":
        assert not top & {"gradio", "ui"}, f"{path.name}: the engine imports the panel"
    if path.parent.name == "ui":
        assert not top & {"torch", "transformers", "peft", "trl"}, f"{path.name}: the panel imports the ML stack"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_uses_another_modules_private_names(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    ours = set()  # names bound to our own modules in this file: `from core import runs` -> runs
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OUR:
            for a in node.names:
                assert not a.name.startswith("_"), f"{path.name} imports {node.module}.{a.name}"
                ours.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            ours |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.split(".")[0] in OUR}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in ours:
                raise AssertionError(f"{path.name}:{node.lineno} uses {owner.id}.{node.attr}")
