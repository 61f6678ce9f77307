"""The plugin host: entry-point discovery, the allow-list, inline plugins, and what is reported when a
plugin is broken, clashes or misspells a hook."""

from __future__ import annotations

from typing import Any

import click
import pytest
from pydantic import BaseModel, ConfigDict

from fieldkit import PluginError, loads_graph
from fieldkit.errors import GraphError
from fieldkit.graph import FieldRef
from fieldkit.ops import Scale
from fieldkit.plugins import Params, get_host, hookimpl


class ZeroParams(Params):
    """No parameters."""


def build_zero(params: ZeroParams, ctx: Any) -> Any:
    """The zero field."""
    return lambda x, sigma, cond: x * 0


class HalfParams(Params):
    field: FieldRef


def build_half(params: HalfParams, ctx: Any) -> Scale:
    """Half of another field."""
    return Scale(ctx.field(params.field), 0.5)


def test_installed_plugins_load_and_a_broken_one_is_reported_by_name(use_plugins):
    host = use_plugins(None)
    registry = host.registry
    assert registry.get("source", "example.constant").plugin == "example"
    assert registry.get("operator", "example.negate").plugin == "example"
    assert registry.get("operator", "guidance").plugin == "fieldkit"
    assert "example-hello" in host.commands()
    broken = [f for f in host.failures if f.name == "broken"]
    assert len(broken) == 1
    assert broken[0].stage == "import"
    assert "RuntimeError" in broken[0].error and "on purpose" in broken[0].error
    info = {i.name: i for i in host.plugins()}
    assert "broken" not in info
    assert info["example"].version == "0.1.0"
    assert info["example"].types == {
        "source": ["example.constant"],
        "operator": ["example.negate"],
        "command": ["example-hello"],
    }
    assert "fieldkit_register_commands" in info["example"].hooks


def test_no_installed_plugin_loads_unless_a_test_opts_in(plugin_site):
    host = get_host()
    assert "example.constant" not in host.registry.names("source")
    assert host.failures == []
    assert [i.name for i in host.plugins()] == ["fieldkit"]


@pytest.mark.parametrize(
    "allow", ["example", "fieldkit-plugin-example", "fieldkit_plugin_example", " example ,"]
)
def test_allow_list_loads_only_the_named_plugins(use_plugins, allow):
    host = use_plugins(allow)
    assert "example.constant" in host.registry.names("source")
    assert host.failures == []


def test_allow_list_by_distribution_name_loads_the_broken_one_alone(use_plugins):
    host = use_plugins("fieldkit-plugin-broken")
    assert [f.name for f in host.failures] == ["broken"]
    assert "example.constant" not in host.registry.names("source")
    assert "guidance" in host.registry.names("operator")


def test_inline_plugin_registers_types_used_by_a_graph_then_is_removed():
    class InlinePlugin:
        @hookimpl
        def fieldkit_register_sources(self, register):
            register("inline.zero", build_zero, ZeroParams)

        @hookimpl
        def fieldkit_register_operators(self, register):
            register("inline.half", build_half, HalfParams, description="half of a field")

    host = get_host()
    host.register(InlinePlugin(), "inline", "1.2.3")
    try:
        reg = host.registry.get("operator", "inline.half")
        assert (reg.plugin, reg.description) == ("inline", "half of a field")
        assert host.registry.get("source", "inline.zero").description == "The zero field."
        graph = loads_graph("fields:\n  z: {type: inline.zero}\n  h: {type: inline.half, field: z}\n")
        assert graph.deps("h") == ["z"]
        assert {i.name: i.version for i in host.plugins()}["inline"] == "1.2.3"
    finally:
        host.unregister("inline")
    assert "inline.zero" not in host.registry.names("source")
    with pytest.raises(PluginError, match=r"unknown source type 'inline\.zero'"):
        host.registry.get("source", "inline.zero")


def test_duplicate_type_name_is_a_problem_naming_both_plugins():
    class First:
        @hookimpl
        def fieldkit_register_sources(self, register):
            register("dup.zero", build_zero, ZeroParams)

    class Second:
        @hookimpl
        def fieldkit_register_sources(self, register):
            register("dup.zero", build_zero, ZeroParams)

        @hookimpl
        def fieldkit_register_operators(self, register):
            register("guidance", build_half, HalfParams)

    host = get_host()
    host.register(First(), "first")
    host.register(Second(), "second")
    try:
        registry = host.registry
        assert registry.get("source", "dup.zero").plugin == "first"
        assert registry.get("operator", "guidance").plugin == "fieldkit"
        problems = "\n".join(registry.problems)
        assert (
            "source 'dup.zero' from plugin 'second' is ignored: plugin 'first' registered that name first"
            in problems
        )
        assert "operator 'guidance' from plugin 'second' is ignored: plugin 'fieldkit'" in problems
    finally:
        host.unregister("first")
        host.unregister("second")
    assert host.registry.problems == []


def test_a_hook_that_raises_is_reported_and_the_rest_still_register():
    class Raising:
        @hookimpl
        def fieldkit_register_sources(self, register):
            raise ValueError("no weights folder configured")

        @hookimpl
        def fieldkit_register_operators(self, register):
            register("raising.half", build_half, HalfParams)

    host = get_host()
    host.register(Raising(), "raising")
    try:
        registry = host.registry
        assert "raising.half" in registry.names("operator")
        assert "gaussian_mixture" in registry.names("source")
        [failure] = host.failures
        assert (failure.name, failure.stage) == ("raising", "register types")
        assert "fieldkit_register_sources: ValueError: no weights folder configured" in failure.error
        assert "plugin 'raising' failed to register types" in str(failure)
    finally:
        host.unregister("raising")


class LooseParams(BaseModel):
    """Pydantic's default: unknown keys are dropped without a word."""

    strength: float = 1.0


class OpenParams(Params):
    """Unknown keys are kept, and the factory never reads them."""

    model_config = ConfigDict(extra="allow")

    strength: float = 1.0


@pytest.mark.parametrize("params", [LooseParams, OpenParams])
def test_params_that_would_take_unknown_keys_refuse_them(params):
    class Loose:
        @hookimpl
        def fieldkit_register_operators(self, register):
            register("loose.op", build_zero, params)

    host = get_host()
    host.register(Loose(), "loose")
    try:
        with pytest.raises(GraphError, match=r"fields\.h\.strenght") as err:
            loads_graph("fields:\n  h: {type: loose.op, strenght: 2}\n")
        assert "'strength'" in str(err.value)  # did you mean
        given = loads_graph("fields:\n  h: {type: loose.op, strength: 2}\n").nodes["h"].params
        assert isinstance(given, params) and type(given).__name__ == params.__name__ and given.strength == 2
        assert host.failures == []
    finally:
        host.unregister("loose")
    assert params.model_validate({"strenght": 2}).strength == 1  # the plugin's own class is left as it is


@pytest.mark.parametrize(
    ("args", "description", "message"),
    [
        (("", build_zero, ZeroParams), "", "empty or non-string name"),
        (("bad.factory", "not callable", ZeroParams), "", "factory that is not callable"),
        (("bad.params", build_zero, dict), "", "whose params is not a pydantic model"),
        (("bad.arity", lambda params: params, ZeroParams), "", "cannot be called as factory(params, ctx)"),
        (
            ("bad.description", build_zero, ZeroParams),
            123,
            "plugin 'invalid' registered source 'bad.description' with a description that is not a string "
            "(int)",
        ),
    ],
)
def test_invalid_registration_is_reported_as_a_plugin_error(args, description, message):
    class Invalid:
        @hookimpl
        def fieldkit_register_sources(self, register):
            register(*args, description=description)

    host = get_host()
    host.register(Invalid(), "invalid")
    try:
        names = host.registry.names("source")
        assert "gaussian_mixture" in names and not any(name.startswith("bad.") for name in names)
        [failure] = host.failures
        assert failure.name == "invalid"
        assert "PluginError" in failure.error and message in failure.error
    finally:
        host.unregister("invalid")


def test_a_misspelled_hook_is_refused():
    class Misspelled:
        @hookimpl
        def fieldkit_register_source(self, register):  # singular: not a fieldkit hook
            register("typo.zero", build_zero, ZeroParams)

    host = get_host()
    with pytest.raises(PluginError, match="'typo' implements a hook fieldkit does not define") as info:
        host.register(Misspelled(), "typo")
    assert "fieldkit_register_source" in str(info.value)
    assert not host.pm.has_plugin("typo")
    assert "typo.zero" not in host.registry.names("source")


def test_commands_hook_failures_and_clashes_are_reported_not_fatal():
    class Adds:
        @hookimpl
        def fieldkit_register_commands(self, cli):
            @cli.command(name="shared")
            def shared() -> None:
                """First."""

    class Clashes:
        @hookimpl
        def fieldkit_register_commands(self, cli):
            cli.add_command(click.Command("shared"))

    class Raises:
        @hookimpl
        def fieldkit_register_commands(self, cli):
            raise ImportError("the plugin's CLI needs an extra")

    host = get_host()
    for plugin, name in ((Adds(), "adds"), (Clashes(), "clashes"), (Raises(), "raises")):
        host.register(plugin, name)
    try:
        commands = host.commands()
        assert commands["shared"].help == "First."
        failures = {f.name: f for f in host.failures}
        assert failures["raises"].stage == "register commands"
        assert "ImportError: the plugin's CLI needs an extra" in failures["raises"].error
        assert "command 'shared' is ignored: plugin 'adds' added that name first" in failures["clashes"].error
        assert {i.name: i.types for i in host.plugins()}["adds"] == {"command": ["shared"]}
    finally:
        for name in ("adds", "clashes", "raises"):
            host.unregister(name)
    assert host.commands() == {}
