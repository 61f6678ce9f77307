"""Booleans in graphs: YAML 1.2's (``true`` and ``false`` only), and never read as numbers.

YAML 1.1 made ``yes``, ``no``, ``on`` and ``off`` booleans, so a route named ``on`` became ``True`` and
``steps: on`` trained one step; and pydantic reads ``true`` as 1 wherever a number belongs."""

from __future__ import annotations

import typing

import pytest
from test_cli_run import DISTILL

from fieldkit import loads_graph
from fieldkit.errors import GraphError
from fieldkit.graph.schema import FlowSpec, RunSpec
from fieldkit.graph.yaml_source import parse_yaml
from fieldkit.plugins.registry import _numeric


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "ON", "y", "n"])
def test_yaml_1_1_boolean_words_are_strings(word: str) -> None:
    assert parse_yaml(f"a: {word}\n{word}: 1\nb: [{word}]\n").data == {"a": word, word: 1, "b": [word]}


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("false", False), ("True", True), ("FALSE", False)]
)
def test_true_and_false_are_still_booleans(text: str, value: bool) -> None:
    assert parse_yaml(f"a: {text}").data == {"a": value}


def test_a_route_may_be_named_on_and_a_boolean_setting_still_takes_yes() -> None:
    text = DISTILL.replace("  t2i: {field", "  on: {field").replace("device: cpu}", "device: cpu, trace: no}")
    graph = loads_graph(text)
    assert list(graph.spec.routes) == ["on"] and graph.spec.run.trace is False


def numeric_fields(model: type) -> list[str]:
    hints = typing.get_type_hints(model)
    return [name for name in model.model_fields if _numeric(hints[name])]


@pytest.mark.parametrize("key", [f"run.{n}" for n in numeric_fields(RunSpec)] + ["flow.steps", "flow.shift"])
@pytest.mark.parametrize("word", ["true", "false"])
def test_a_boolean_where_a_number_belongs_is_refused(key: str, word: str) -> None:
    with pytest.raises(GraphError, match="a number belongs here, not a boolean") as err:
        loads_graph(DISTILL, [f"{key}={word}"])
    assert key in err.value.message


def test_a_list_of_numbers_holding_a_boolean_is_refused() -> None:
    with pytest.raises(GraphError, match="not a boolean"):
        loads_graph(DISTILL, ["run.optimizer.betas=[0.9, true]"])


def test_the_numeric_fields_found_are_the_numbers() -> None:
    assert {"steps", "lr", "batch_size", "seed"} <= set(numeric_fields(RunSpec))
    assert "trace" not in numeric_fields(RunSpec) and "shift" in numeric_fields(FlowSpec)


@pytest.mark.parametrize("override", ["fields.mixture.shape=[1, 4, true]", "fields.guided.w=true"])
def test_a_boolean_in_a_types_params_where_a_number_belongs_is_refused(override: str) -> None:
    with pytest.raises(GraphError, match="a number belongs here, not a boolean"):
        loads_graph(DISTILL, [override])
