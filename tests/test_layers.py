"""Layers point one way (DESIGN.md): conventions and fields at the bottom, the graph above them, the engine
above the graph, the plugin host and public facades above the engine, commands at the top. No module under
fieldkit/ imports from a layer above its own, not even inside a function.

Imports under ``if TYPE_CHECKING:`` are not counted: they are never executed, and a contract may name the
context its callers pass (``protocols.Register`` names the graph's ``BuildContext``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fieldkit"

#: Bottom to top. A module's layer is that of the longest prefix listed (``fieldkit.ops`` covers
#: ``fieldkit.ops.guidance``); a module no prefix covers fails the test until it is placed here.
LAYERS: dict[str, tuple[str, ...]] = {
    # conventions, fields and the contracts plugins implement: no graph, no engine
    "fields": (
        "fieldkit.errors",
        "fieldkit.owned",
        "fieldkit.memory_guard",
        "fieldkit.atomic",
        "fieldkit.files",
        "fieldkit.tables",
        "fieldkit.quiet",
        "fieldkit.lazy",
        "fieldkit.cond",
        "fieldkit.capabilities",
        "fieldkit.field",
        "fieldkit.flow",
        "fieldkit.data",
        "fieldkit.analytic",
        "fieldkit.memory_guard",
        "fieldkit.plugin_outputs",
        "fieldkit.attention",
        "fieldkit.merge",
        "fieldkit.ops",
        "fieldkit.models",
        "fieldkit.protocols",
        "fieldkit.training_params",
        "fieldkit.plugins.registry",
        "fieldkit.plugins.hookspecs",
        "fieldkit.plugins.exits",
    ),
    # the YAML schema, validation against a registry of types, and building the nodes
    "graph": ("fieldkit.graph",),
    # training, evaluation and export, and the kit backbone plugins build their fields with
    "engine": (
        "fieldkit.distill",
        "fieldkit.eval",
        "fieldkit.export",
        "fieldkit.compile",
        "fieldkit.backbones",
    ),
    # the plugin host (it registers fieldkit's own plugin, whose factories build engine objects) and the
    # public facades: the package itself, what plugins import, what their tests use
    "host": (
        "fieldkit.builtin",
        "fieldkit.plugins",
        "fieldkit.plugins.manager",
        "fieldkit.plugin_api",
        "fieldkit.testing",
        "fieldkit.commands.options",  # the GRAPH / --set decorator, for plugins' commands too
        "fieldkit",
    ),
    "commands": ("fieldkit.cli", "fieldkit.commands", "fieldkit.__main__"),
}

#: Known upward imports, each with why it is still there and what removes it. Keep this empty (an entry
#: whose import is gone is harmless but should be deleted).
ALLOWED: dict[tuple[str, str], str] = {}

RANK = {name: rank for rank, name in enumerate(LAYERS)}
PREFIXES = {prefix: layer for layer, prefixes in LAYERS.items() for prefix in prefixes}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        layer = PREFIXES.get(".".join(parts[:n]))
        if layer is not None:
            return layer
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def runtime_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every fieldkit import that can run: at module level or inside a function,
    outside ``if TYPE_CHECKING:``. ``from fieldkit import ops`` counts as ``fieldkit.ops``."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "fieldkit")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fieldkit":
            found.extend((node.lineno, imported(node.module, alias.name)) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def imported(module: str, name: str) -> str:
    """What ``from module import name`` imports from: the submodule ``module.name`` if there is one."""
    path = PACKAGE.parent.joinpath(*module.split("."), name)
    return f"{module}.{name}" if path.is_dir() or path.with_suffix(".py").exists() else module


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    assert [module_name(p) for p in MODULES if layer_of(module_name(p)) is None] == []


def upward_imports() -> dict[tuple[str, str], str]:
    found = {}
    for path in MODULES:
        module = module_name(path)
        own = layer_of(module)
        for line, imported in runtime_imports(path):
            target = layer_of(imported)
            if own is not None and target is not None and RANK[target] > RANK[own]:
                found[(module, imported)] = f"{path.relative_to(PACKAGE.parent)}:{line}: {own} -> {target}"
    return found


def test_nothing_imports_upward():
    upward = upward_imports()
    unexpected = [where for pair, where in upward.items() if pair not in ALLOWED]
    assert unexpected == []


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("from fieldkit.distill.engine import Engine", ["fieldkit.distill.engine"]),
        ("def f():\n    import fieldkit.cli", ["fieldkit.cli"]),
        ("from fieldkit import ops, __version__", ["fieldkit.ops", "fieldkit"]),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from fieldkit.cli import cli", []),
        (
            "import typing\nif typing.TYPE_CHECKING:\n    import fieldkit.cli\n"
            "else:\n    import fieldkit.flow",
            ["fieldkit.flow"],
        ),
    ],
)
def test_the_import_reader_sees_function_level_imports_and_skips_type_only_ones(tmp_path, code, expected):
    path = tmp_path / "m.py"
    path.write_text(code)
    assert [module for _, module in runtime_imports(path)] == expected
