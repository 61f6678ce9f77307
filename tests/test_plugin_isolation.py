"""A plugin that calls ``sys.exit`` (at import, in a registration hook, in a factory) is contained and
reported by name; the other plugins and every command keep working. Ctrl-C still stops everything."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from fieldkit import loads_graph
from fieldkit.cli import cli
from fieldkit.errors import GraphError
from fieldkit.graph.builder import BuildContext
from fieldkit.plugins import Params, get_host, hookimpl
from fieldkit.plugins.manager import ALLOW_ENV, PluginHost, reset_host

GOOD = """\
fields:
  t: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}
  init: {type: fieldkit.mmdit, config: {sample_size: [2, 2], patch_size: 1, hidden: 8, heads: 2, depth: 1}}
routes:
  r: {field: t, data: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}}
student: {init: init}
"""


def install(site: Path, module: str, body: str) -> None:
    """A real installed plugin: a module and a dist-info folder whose entry point importlib finds."""
    (site / f"{module}.py").write_text(body)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[fieldkit]\n{module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("exiting_")]:
        del sys.modules[name]
    reset_host()


def test_a_plugin_that_exits_at_import_is_reported_and_commands_keep_working(site, monkeypatch, tmp_path):
    install(site, "exiting_at_import", "import sys\nsys.exit(3)\n")
    monkeypatch.setenv(ALLOW_ENV, "exiting_at_import")
    reset_host()
    host = get_host()
    [failure] = host.failures
    assert failure.name == "exiting_at_import" and failure.stage == "import"
    assert "SystemExit: 3" in failure.error
    graph = tmp_path / "g.yaml"
    graph.write_text(GOOD)
    result = CliRunner().invoke(cli, ["validate", str(graph)])
    assert result.exit_code == 0, result.output
    listing = CliRunner().invoke(cli, ["plugins"])
    assert listing.exit_code == 0 and "exiting_at_import" in listing.output


def test_ctrl_c_at_import_is_not_swallowed(site, monkeypatch):
    install(site, "exiting_interrupt", "raise KeyboardInterrupt\n")
    monkeypatch.setenv(ALLOW_ENV, "exiting_interrupt")
    with pytest.raises(KeyboardInterrupt):
        PluginHost().load_entry_points()


class ExitsInHook:
    @hookimpl
    def fieldkit_register_sources(self, register: Any) -> None:
        sys.exit(4)

    @hookimpl
    def fieldkit_register_commands(self, cli: Any) -> None:
        sys.exit(5)


def test_a_hook_that_exits_is_reported_by_plugin_name():
    host = get_host()
    host.register(ExitsInHook(), "exits-in-hook")
    try:
        assert "gaussian_mixture" in host.registry.names("source")
        host.commands()
        failures = {(f.name, f.stage, f.error.rsplit(": ", 2)[-2]) for f in host.failures}
        assert ("exits-in-hook", "register types", "SystemExit") in failures
        assert ("exits-in-hook", "register commands", "SystemExit") in failures
        assert loads_graph(GOOD).nodes["t"].registration.name == "gaussian_mixture"
    finally:
        host.unregister("exits-in-hook")


class ExitParams(Params):
    """No parameters."""


def build_exiting(params: ExitParams, ctx: Any) -> Any:
    """A factory that gives up the hard way."""
    sys.exit(6)


class ExitsInFactory:
    @hookimpl
    def fieldkit_register_sources(self, register: Any) -> None:
        register("exiting.source", build_exiting, ExitParams)


def test_a_factory_that_exits_is_a_graph_error_naming_the_plugin():
    host = get_host()
    host.register(ExitsInFactory(), "exits-in-factory")
    try:
        graph = loads_graph("fields:\n  bad: {type: exiting.source}\n")
        with pytest.raises(GraphError, match=r"plugin 'exits-in-factory'\) failed to build: SystemExit: 6"):
            BuildContext(graph).field("bad")
    finally:
        host.unregister("exits-in-factory")
