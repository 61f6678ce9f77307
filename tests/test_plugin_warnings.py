"""Registration mistakes that would lose a plugin without any error are warnings, shown by
``fieldkit plugins``, ``fieldkit validate`` and under a graph error: a ``fieldkit_*`` function without
``@hookimpl``, a hook that registered nothing, an installed ``fieldkit-plugin-*`` without a ``fieldkit`` entry
point, and a ``FIELDKIT_LOAD_PLUGINS`` name that matches nothing. Plugins are registered inline or installed
into a temporary folder; nothing installed in the environment is loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_cli import GOOD

from fieldkit.cli import cli
from fieldkit.plugin_api import Params, hookimpl
from fieldkit.plugins.manager import ALLOW_ENV, PluginWarning, get_host, reset_host


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
        graph.write_text("fields:\n  s: {type: forgetful.source}\n")
        result = invoke("validate", str(graph))
        assert result.exit_code == 2
        assert "unknown source or operator type 'forgetful.source'" in result.stderr
        assert f"note: plugin {expected}" in " ".join(result.stderr.split())
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


def test_fieldkits_own_plugin_has_no_warnings():
    assert get_host().warnings() == []


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
