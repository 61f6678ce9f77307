"""The docs stay true: generated tables are current, and the code and graphs they show run as shown."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path

import pytest

from fieldkit import loads_graph

DOCS = Path(__file__).parent.parent / "docs"
EXAMPLE = Path(__file__).parent / "plugins" / "fieldkit-plugin-example"
TEMPERED = Path(__file__).parent / "plugins" / "fieldkit-plugin-tempered"


def blocks(path: Path, lang: str) -> list[str]:
    """The fenced code blocks of one language in a markdown file."""
    return re.findall(rf"^```{lang}\n(.*?)^```$", path.read_text(encoding="utf-8"), re.DOTALL | re.MULTILINE)


def test_yaml_reference_tables_are_generated_from_the_code(capsys):
    spec = importlib.util.spec_from_file_location("gen_yaml_reference", DOCS / "gen_yaml_reference.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.main(["--check"]) == 0, capsys.readouterr().err


def test_yaml_reference_example_graph_validates():
    graph = loads_graph(blocks(DOCS / "yaml.md", "yaml")[0])
    assert set(graph.nodes) == {"teacher", "guided"}


@pytest.mark.parametrize(
    ("folder", "package"), [(EXAMPLE, "fieldkit_plugin_example"), (TEMPERED, "fieldkit_plugin_tempered")]
)
def test_plugin_guide_shows_the_plugins_the_tests_install_in_full(folder, package):
    assert (folder / "pyproject.toml").read_text() in blocks(DOCS / "plugins.md", "toml")
    modules = sorted((folder / package).glob("*.py"))
    assert len(modules) == 2
    for module in modules:
        assert module.read_text() in blocks(DOCS / "plugins.md", "python"), module.name


def test_plugin_guide_test_example_runs(plugin_site):
    [code] = [b for b in blocks(DOCS / "plugins.md", "python") if b.startswith("# test_example.py")]
    namespace: dict[str, object] = {}
    exec(compile(code, "docs/plugins.md", "exec"), namespace)
    tests = [f for name, f in namespace.items() if name.startswith("test_") and callable(f)]
    assert tests
    for test in tests:
        test()


def test_plugin_guide_graph_validates_with_the_example_plugin(use_plugins):
    use_plugins("example")
    graph = blocks(DOCS / "plugins.md", "yaml")[0]
    assert loads_graph(graph).nodes["away"].registration.plugin == "example"


def resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` names an importable module or an attribute of one."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        return all((obj := getattr(obj, attr, None)) is not None for attr in parts[n:])
    return False


def test_every_fieldkit_name_in_the_plugin_guide_exists():
    names = set(re.findall(r"`(fieldkit(?:\.\w+)+)", (DOCS / "plugins.md").read_text(encoding="utf-8")))
    assert "fieldkit.graph.BuildContext" in names
    assert [name for name in sorted(names) if not resolves(name)] == []
