"""Registration mistakes that would lose a plugin without any error are warnings, shown by
``fieldkit plugins``, ``fieldkit validate`` and under a graph error: a ``fieldkit_*`` function without
``@hookimpl``, a hook that registered nothing, an installed ``fieldkit-plugin-*`` without a ``fieldkit`` entry
point, and a ``FIELDKIT_LOAD_PLUGINS`` name that matches nothing. Clashes that lose a plugin, a command or a
type are problems, shown by ``fieldkit plugins`` and under a graph error: two distributions with one
entry-point name (or one named ``fieldkit``), a command named like one of fieldkit's, one type name from two
plugins. Plugins are registered inline or installed into a temporary folder; nothing installed in the
environment is loaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli import GOOD

from fieldkit.cli import cli
from fieldkit.plugin_api import Params, hookimpl
from fieldkit.plugins.manager import ALLOW_ENV, PluginWarning, get_host, reset_host


def assert_noted_under_unknown_type(graph: Path, name: str, note: str) -> None:
    """``fieldkit validate`` of a graph using the type ``name`` that no plugin provides: the error names
    it and carries ``note``, the plugin trouble that explains it."""
    graph.write_text(f"fields:\n  s: {{type: {name}}}\n")
    result = invoke("validate", str(graph))
    assert result.exit_code == 2
    assert f"unknown source or operator type {name!r}" in result.stderr
    assert note in " ".join(result.stderr.split())


def build_zero(params: Params, ctx: object) -> object:
    """The zero field."""
    return lambda x, sigma, cond: x * 0


class Forgetful:
    """Marks one hook and forgets the mark on another, whose type is then unknown."""

    @hookimpl
    def fieldkit_register_operators(self, register):
        register("forgetful.zero", build_zero, Params)

    def fieldkit_register_sources(self, register):  # no @hookimpl: pluggy never calls it
        register("forgetful.source", build_zero, Params)


class Idle:
    """Hooks that run but register nothing."""

    @hookimpl
    def fieldkit_register_sources(self, register):
        if False:  # a condition that never holds, as a misread setting would make it
            register("idle.zero", build_zero, Params)

    @hookimpl
    def fieldkit_register_commands(self, cli):
        pass


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def messages(warnings: list[PluginWarning]) -> list[str]:
    return [str(w) for w in warnings]


def test_a_hook_without_hookimpl_is_a_warning_in_plugins_validate_and_the_graph_error(tmp_path):
    host = get_host()
    host.register(Forgetful(), "forgetful")
    try:
        assert "forgetful.zero" in host.registry.names("operator")
        expected = (
            "forgetful: fieldkit_register_sources is not marked @hookimpl, so fieldkit never calls it "
            "(decorate it with fieldkit.plugin_api.hookimpl)"
        )
        assert messages(host.warnings()) == [expected]
        listing = invoke("plugins", "--json")
        assert json.loads(listing.stdout)["warnings"] == [
            {"name": "forgetful", "stage": "hooks", "message": expected.removeprefix("forgetful: ")}
        ]
        assert f"warning: {expected}" in " ".join(invoke("plugins").stdout.split())
        graph = tmp_path / "graph.yaml"
        assert_noted_under_unknown_type(graph, "forgetful.source", f"note: plugin {expected}")
        graph.write_text(GOOD)
        result = invoke("validate", str(graph))
        assert result.exit_code == 0, result.output
        assert f"warning: plugin {expected}" in " ".join(result.stdout.split())
    finally:
        host.unregister("forgetful")
    assert host.warnings() == []


def test_hooks_that_register_nothing_are_warnings():
    host = get_host()
    host.register(Idle(), "idle")
    try:
        assert messages(host.warnings()) == [
            "idle: fieldkit_register_sources ran but registered nothing (did it forget to call register?)",
            "idle: fieldkit_register_commands ran but registered nothing (did it forget to call register?)",
        ]
    finally:
        host.unregister("idle")
    assert host.warnings() == []


def test_fieldkits_own_plugin_has_no_warnings_or_problems():
    assert get_host().warnings() == [] and get_host().problems() == []


def fake_distribution(site: Path, name: str, entry_points: str) -> None:
    """A distribution's installed metadata (what pip writes), found through ``importlib.metadata``."""
    info = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_an_installed_plugin_without_a_fieldkit_entry_point_is_a_warning(tmp_path, monkeypatch):
    fake_distribution(tmp_path, "fieldkit-plugin-typo", "[fieldkit.plugins]\ntypo = fieldkit_plugin_typo\n")
    fake_distribution(tmp_path, "fieldkit-plugin-bare", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(ALLOW_ENV, "fieldkit-plugin-typo,fieldkit_plugin_bare")
    reset_host()
    assert messages(get_host().warnings()) == [
        "fieldkit-plugin-bare: installed, but has no entry point in the group 'fieldkit', so it never loads; "
        'its pyproject.toml needs [project.entry-points.fieldkit] NAME = "module"',
        "fieldkit-plugin-typo: installed, but has no entry point in the group 'fieldkit' (it has entry "
        "points in 'fieldkit.plugins'), so it never loads; its pyproject.toml needs "
        '[project.entry-points.fieldkit] NAME = "module"',
    ]
    monkeypatch.setenv(ALLOW_ENV, "fieldkit-plugin-bare")
    reset_host()
    assert [w.name for w in get_host().warnings()] == ["fieldkit-plugin-bare"]


@pytest.mark.parametrize(
    ("allow", "expected"),
    [
        (
            "exampel",
            [
                "exampel: FIELDKIT_LOAD_PLUGINS names 'exampel', which matches no installed plugin; "
                "did you mean 'example'?"
            ],
        ),
        ("example, fieldkit", []),
        ("fieldkit_plugin_example", []),
    ],
)
def test_a_load_plugins_name_that_matches_nothing_is_a_warning(use_plugins, allow, expected):
    host = use_plugins(allow)
    assert messages(host.warnings()) == expected
    listing = json.loads(invoke("plugins", "--json").stdout)
    assert [w["name"] for w in listing["warnings"]] == [w.split(":")[0] for w in expected]


def fake_plugin(site: Path, dist: str, entry_point: str, module: str) -> None:
    """An installed distribution ``dist`` whose entry point ``entry_point`` loads ``module``, which registers
    the source ``MODULE.zero``."""
    body = (
        "from fieldkit.plugin_api import Params, hookimpl\n\n\n"
        "@hookimpl\ndef fieldkit_register_sources(register):\n"
        f"    register('{module}.zero', lambda params, ctx: None, Params)\n"
    )
    site.mkdir()
    (site / f"{module}.py").write_text(body)
    fake_distribution(site, dist, f"[fieldkit]\n{entry_point} = {module}\n")


@pytest.fixture
def site(tmp_path):
    """A folder on ``sys.path`` for :func:`fake_plugin` (the modules it imported are forgotten after)."""
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("clash_")]:
        del sys.modules[name]


def test_two_distributions_with_one_entry_point_name_are_a_problem_naming_both(site, monkeypatch):
    fake_plugin(site / "b", "fieldkit-plugin-twin-b", "twin", "clash_b")
    fake_plugin(site / "a", "fieldkit-plugin-twin-a", "twin", "clash_a")
    monkeypatch.syspath_prepend(str(site / "b"))
    monkeypatch.syspath_prepend(str(site / "a"))  # first on the path: its entry point is found first
    monkeypatch.setenv(ALLOW_ENV, "twin")
    reset_host()
    problem = (
        "entry point 'twin' of distribution 'fieldkit-plugin-twin-b' is not loaded: distribution "
        "'fieldkit-plugin-twin-a' has an entry point of that name, loaded first; uninstall one of them (pip "
        "uninstall fieldkit-plugin-twin-b) or rename the entry point in [project.entry-points.fieldkit] of "
        "fieldkit-plugin-twin-b's pyproject.toml"
    )
    listing = json.loads(invoke("plugins", "--json").stdout)
    assert {p["name"]: p["types"] for p in listing["plugins"]}["twin"] == {"source": ["clash_a.zero"]}
    assert listing["problems"] == [problem]
    assert f"problem: {problem}" in " ".join(invoke("plugins").stdout.split())
    assert_noted_under_unknown_type(site / "graph.yaml", "clash_b.zero", f"note: plugin problem: {problem}")


def test_an_entry_point_named_fieldkit_is_a_problem(site, monkeypatch):
    fake_plugin(site / "own", "fieldkit-plugin-own", "fieldkit", "clash_own")
    monkeypatch.syspath_prepend(str(site / "own"))
    monkeypatch.setenv(ALLOW_ENV, "fieldkit-plugin-own")
    reset_host()
    host = get_host()
    assert host.problems() == [
        "entry point 'fieldkit' of distribution 'fieldkit-plugin-own' is not loaded: 'fieldkit' is "
        "fieldkit's own plugin; rename the entry point in [project.entry-points.fieldkit] of "
        "fieldkit-plugin-own's pyproject.toml"
    ]
    assert [i.name for i in host.plugins()] == ["fieldkit"] and "clash_own" not in sys.modules


class Hijacker:
    """Adds a command named like one of fieldkit's, and one of its own."""

    @hookimpl
    def fieldkit_register_commands(self, cli):
        @cli.command(name="distill")
        def distill():
            """Not fieldkit's distill."""

        @cli.command(name="hijacker-hello")
        def hello():
            """Hello."""


def test_a_command_named_like_one_of_fieldkits_is_a_problem_and_not_listed(tmp_path):
    host = get_host()
    host.register(Hijacker(), "hijacker")
    try:
        problem = (
            "command 'distill' from plugin 'hijacker' is ignored: fieldkit has a command of that name; the "
            "plugin must give its command another name (e.g. hijacker-distill)"
        )
        assert host.problems() == [problem]
        assert {i.name: i.types for i in host.plugins()}["hijacker"] == {"command": ["hijacker-hello"]}
        assert json.loads(invoke("plugins", "--json").stdout)["problems"] == [problem]
        assert "Not fieldkit's distill" not in invoke("distill", "--help").stdout
        graph = tmp_path / "graph.yaml"
        graph.write_text("fields:\n  s: {type: hijacker.zero}\n")
        assert f"note: plugin problem: {problem}" in " ".join(invoke("validate", str(graph)).stderr.split())
    finally:
        host.unregister("hijacker")
    assert host.problems() == []


class LooseOperator:
    """Registers ``shared.op`` with no parameters."""

    @hookimpl
    def fieldkit_register_operators(self, register):
        register("shared.op", build_zero, Params)


class StrengthParams(Params):
    strength: float = 1.0


class StrongOperator:
    """Registers ``shared.op`` with a ``strength``: ignored, the first plugin has that name."""

    @hookimpl
    def fieldkit_register_operators(self, register):
        register("shared.op", build_zero, StrengthParams)


def validate_with_a_clash(tmp_path, text):
    """``fieldkit validate`` of a graph ``text`` while two plugins register ``shared.op``."""
    host = get_host()
    host.register(LooseOperator(), "loose")
    host.register(StrongOperator(), "strong")
    try:
        graph = tmp_path / "graph.yaml"
        graph.write_text(text)
        return invoke("validate", str(graph))
    finally:
        host.unregister("loose")
        host.unregister("strong")


def test_a_type_name_clash_is_noted_under_the_graph_error_it_explains(tmp_path):
    result = validate_with_a_clash(tmp_path, "fields:\n  s: {type: shared.op, strength: 2}\n")
    assert result.exit_code == 2
    assert "strength" in result.stderr
    assert (
        "note: plugin problem: operator 'shared.op' from plugin 'strong' is ignored: plugin 'loose' "
        "registered that name first" in " ".join(result.stderr.split())
    )


def test_a_graph_that_validates_beside_a_clash_still_shows_it(tmp_path):
    result = validate_with_a_clash(tmp_path, GOOD)
    assert result.exit_code == 0, result.output
    assert (
        "plugin problem: operator 'shared.op' from plugin 'strong' is ignored: plugin 'loose' registered "
        "that name first" in " ".join(result.output.split())
    )
