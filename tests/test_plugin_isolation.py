"""A plugin that calls ``sys.exit`` (at import, in a registration hook, in a factory) is contained and
reported by name; the other plugins and every command keep working. Ctrl-C still stops everything. A
``sys.exit`` in a plugin object the build checks or the final evaluation call (a field, data bucket, metric)
is an error naming it, never a quiet exit. What a plugin prints while it loads goes to stderr, and what its
errors say is printed as written."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from test_build_checks import GRAPH

from fieldkit import loads_graph
from fieldkit.analytic import GaussianMixtureData, GaussianMixtureField
from fieldkit.cli import cli
from fieldkit.distill.engine import Engine
from fieldkit.distill.memory import training_bytes
from fieldkit.errors import GraphError, PluginError
from fieldkit.eval.report import evaluate
from fieldkit.graph.builder import BuildContext
from fieldkit.plugins import Params, get_host, hookimpl
from fieldkit.plugins.exits import exit_is_error
from fieldkit.plugins.manager import ALLOW_ENV, PluginHost, reset_host
from fieldkit.protocols import Route

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


def exit_zero(*args: Any) -> Any:
    """Plugin code that gives up the hard way, with the status of success."""
    sys.exit(0)


class ExitingField(torch.nn.Module):
    """A field (with a weight, so that it can be a student) whose forward exits."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: Any, sigma: Any, cond: Any) -> Any:
        return exit_zero()


class ExitingData:
    """A data bucket whose sample exits."""

    shape = (1, 4, 4)
    sample = staticmethod(exit_zero)


class ExitsWhenCalled:
    """A field, a data bucket and a metric whose calls exit, each under its own type name."""

    @hookimpl
    def fieldkit_register_sources(self, register: Any) -> None:
        register("exiting.field", lambda params, ctx: ExitingField(), Params)

    @hookimpl
    def fieldkit_register_datasets(self, register: Any) -> None:
        register("exiting.data", lambda params, ctx: ExitingData(), Params)

    @hookimpl
    def fieldkit_register_metrics(self, register: Any) -> None:
        register("exiting.metric", lambda params, ctx: exit_zero, Params)


DATA = "data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}"
ROUTE_GRAPH = GRAPH  # the build checks' graph: an affine teacher on a Gaussian-mixture route


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        (
            "teacher: {type: affine, seed: 1}",
            "teacher: {type: exiting.field}",
            "<string>:2: fields.teacher: source type 'exiting.field' (plugin 'exits-when-called')",
        ),
        (
            DATA,
            "data: {type: exiting.data}",
            "<string>:7: routes.r.data: dataset type 'exiting.data' (plugin 'exits-when-called')",
        ),
        (
            DATA,
            f"{DATA}\n    metrics: [{{type: exiting.metric}}]",
            "<string>:8: routes.r.metrics.0: metric type 'exiting.metric' (plugin 'exits-when-called')",
        ),
    ],
    ids=["field", "data", "metric"],
)
def test_an_exit_in_the_build_checks_is_an_error_naming_the_plugin_object(distill_world, old, new, named):
    distill_world.register(ExitsWhenCalled(), "exits-when-called")
    try:
        graph = loads_graph(ROUTE_GRAPH.replace(old, new))
        with pytest.raises(PluginError) as err:
            Engine(graph, write=False, show_progress=False)
    finally:
        distill_world.unregister("exits-when-called")
    message = str(err.value)
    assert message.startswith(named), message
    assert "sys.exit(0) was called" in message and f"{__file__}:" in message and "(in exit_zero)" in message
    assert "must raise an exception, not exit the process" in message


def test_an_exit_in_the_final_evaluation_is_an_error_naming_the_metric_or_field():
    field = GaussianMixtureField.random(2, (1, 2, 2), std=0.1, seed=0)
    route = Route("t2i", field, GaussianMixtureData(field), metrics=(exit_zero,))
    metric_exit = r"^routes\.t2i\.metrics\.0: sys\.exit\(0\) was called on 4 samples"
    with pytest.raises(PluginError, match=metric_exit):
        evaluate({"teacher": field}, [route], torch.linspace(1, 0, 3), samples=4)
    with pytest.raises(PluginError, match=r"^field 'broken': sys\.exit\(0\) was called while it generated"):
        evaluate({"broken": ExitingField()}, [route], torch.linspace(1, 0, 3), samples=4)


def test_an_exit_in_the_memory_count_is_left_to_the_build_checks_that_name_it(distill_world):
    distill_world.register(ExitsWhenCalled(), "exits-when-called")
    try:
        init = "init: {type: exiting.field}"
        graph = loads_graph(ROUTE_GRAPH.replace("init: {type: affine, seed: 2}", init))
        assert training_bytes(graph) > 0  # the weights and states; the activations the forward would save: 0
        with pytest.raises(PluginError, match=r"^<string>:8: student\.init: the student .* sys\.exit\(0\)"):
            Engine(graph, write=False, show_progress=False)
    finally:
        distill_world.unregister("exits-when-called")


class ExitHook:
    """A library's replacement of ``sys.exit`` (as wandb installs one): it records the code and exits."""

    def __init__(self) -> None:
        self.original, self.code = sys.exit, None

    def exit(self, code: object = 0) -> None:
        self.code = code
        self.original(code)


def test_the_exit_is_placed_where_the_plugin_called_it_past_a_replaced_sys_exit(monkeypatch):
    hook = ExitHook()
    monkeypatch.setattr(sys, "exit", hook.exit)
    with pytest.raises(PluginError) as err, exit_is_error("the thing", "now"):
        sys.exit(3)
    assert "sys.exit(3) was called now" in err.value.message and hook.code == 3
    assert f"{__file__}:" in err.value.message and "(in test_the_exit_is_placed" in err.value.message


def test_exit_is_error_keeps_every_exit_code_and_lets_ctrl_c_through():
    exit_none = r"^the thing: sys\.exit\(None\) was called now, at .*\(in test_"
    with pytest.raises(PluginError, match=exit_none), exit_is_error("the thing", "now"):
        raise SystemExit(None)
    with pytest.raises(KeyboardInterrupt), exit_is_error("the thing", "now"):
        raise KeyboardInterrupt


CHATTY = """\
from fieldkit.plugin_api import Params, hookimpl
print("chatty loaded")


@hookimpl
def fieldkit_register_sources(register):
    print("chatty registers")
    register("chatty.zero", lambda params, ctx: None, Params)
"""


def test_what_a_plugin_prints_goes_to_stderr_and_plugins_json_stays_valid(site, monkeypatch):
    install(site, "exiting_chatty", CHATTY)
    monkeypatch.setenv(ALLOW_ENV, "exiting_chatty")
    reset_host()
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {p["name"]: p["types"] for p in data["plugins"]}["exiting_chatty"] == {"source": ["chatty.zero"]}
    assert result.stderr.split("\n")[:2] == ["chatty loaded", "chatty registers"]


@pytest.mark.parametrize(
    "error", ["needs the extra: pip install 'x[cuda]'", "weights not found under [/data/models] (set X)"]
)
def test_a_plugins_error_is_printed_as_written_not_as_markup(site, monkeypatch, error):
    install(site, "exiting_markup", f"raise ImportError({error!r})\n")
    monkeypatch.setenv(ALLOW_ENV, "exiting_markup")
    reset_host()
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output  # the listing of failures is not itself a failure
    assert f"failed: exiting_markup (import): ImportError: {error}" in " ".join(result.stdout.split())
