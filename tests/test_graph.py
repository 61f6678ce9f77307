"""Loading field graphs: valid graphs, every kind of bad input (one GraphError naming file:line, node and
key), ``--set`` overrides, and lazy building through BuildContext (with a plugin's types from YAML)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fieldkit import Cond, GraphError, load_graph, loads_graph
from fieldkit.graph import BuildContext
from fieldkit.plugins import Params, get_host, hookimpl

GOOD = """\
fields:
  teacher: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}
  guided: {type: guidance, field: teacher, w: 3.0}
  both: {type: mix, fields: [guided, teacher]}
routes:
  t2i:
    field: guided
    data: {type: gaussian_mixture, classes: 3, shape: [1, 2, 2]}
    weight: 2
student: {init: teacher}
run: {steps: 5}
"""

TEACHER = "  teacher: {type: gaussian_mixture, classes: 3, shape: [1]}\n"


def write(tmp_path: Path, text: str, name: str = "graph.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_graph_loads_with_types_and_defaults(tmp_path):
    graph = load_graph(write(tmp_path, GOOD))
    assert {name: t.registration.name for name, t in graph.nodes.items()} == {
        "teacher": "gaussian_mixture",
        "guided": "guidance",
        "both": "mix",
    }
    assert graph.deps("both") == ["guided", "teacher"]
    assert graph.datasets["t2i"].registration.kind == "dataset"
    assert graph.spec.routes["t2i"].weight == 2.0
    assert (graph.router.registration.name, graph.method.registration.name) == ("hard", "danceopd")
    assert graph.spec.run.steps == 5
    assert graph.spec.flow.steps == 16
    assert graph.name == "graph"
    assert graph.root == tmp_path


BAD = [
    pytest.param(
        "fields:\n  t: {type: gaussian_mixture, classes: 3\n", 3, ["malformed YAML"], id="malformed"
    ),
    pytest.param(
        f"fields:\n{TEACHER}  g: {{type: guidanse, field: teacher, w: 1}}\n",
        3,
        [
            "fields.g.type",
            "unknown source or operator type 'guidanse'",
            "did you mean 'guidance'?",
            "(known source or operator types: ",
            "gaussian_mixture, guidance, masked, merge, mix",
        ],
        id="unknown-type",
    ),
    pytest.param(
        f"fields:\n{TEACHER}  g: {{type: guidance, field: teachr, w: 1}}\n",
        3,
        ["fields.g.field", "unknown field 'teachr'", "known fields: g, teacher"],
        id="unknown-reference",
    ),
    pytest.param(
        f"fields:\n{TEACHER}  m: {{type: mix, fields: [teacher, nope]}}\n",
        3,
        ["fields.m.fields.1", "unknown field 'nope'"],
        id="unknown-reference-in-list",
    ),
    pytest.param(
        "fields:\n  a: {type: scale, field: b, c: 1}\n  b: {type: scale, field: a, c: 2}\n",
        3,
        ["fields.b", "cycle in the graph: a -> b -> a"],
        id="cycle",
    ),
    pytest.param(
        "fields:\n  a: {type: guidance, field: a, w: 1}\n",
        2,
        ["fields.a", "cycle in the graph: a -> a"],
        id="self-loop",
    ),
    pytest.param(
        f"fields:\n{TEACHER}  g: {{type: guidance, field: teacher, w: three}}\n",
        3,
        ["fields.g.w", "valid number", "(got 'three')"],
        id="string-for-number",
    ),
    pytest.param(
        f"fields:\n{TEACHER}run:\n  steps: 10\n  lr: fast\n",
        5,
        ["run.lr", "valid number", "(got 'fast')"],
        id="string-for-number-in-run",
    ),
    pytest.param(
        "fields:\n  t: {type: gaussian_mixture, classes: 3, shape: [1], colour: red}\n",
        2,
        ["fields.t.colour", "unknown key 'colour'", "valid keys: classes, shape, std, seed"],
        id="unknown-key",
    ),
    pytest.param(
        f"fields:\n{TEACHER}flow:\n  stpes: 4\n",
        4,
        ["flow.stpes", "unknown key 'stpes'", "valid keys: steps, shift"],
        id="unknown-key-in-section",
    ),
    pytest.param(
        f"fields:\n{TEACHER}feilds: {{}}\n",
        3,
        ["feilds", "unknown key 'feilds'", "valid keys: fields, routes"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        "fields:\n  t: {type: gaussian_mixture, shape: [1]}\n",
        2,
        ["fields.t.classes", "missing required key 'classes'"],
        id="missing-required-key",
    ),
    pytest.param(
        "fields:\n  t: {classes: 3}\n",
        2,
        ["fields.t.type", "missing required key 'type'"],
        id="missing-type",
    ),
    pytest.param(
        f"fields:\n{TEACHER}routes:\n  r:\n    field: teacher\n",
        4,
        ["routes.r.data", "missing required key 'data'"],
        id="missing-route-data",
    ),
    pytest.param(
        f"fields:\n{TEACHER}student:\n  init: techer\n",
        4,
        ["student.init", "unknown field 'techer'"],
        id="unknown-student-init",
    ),
    pytest.param(
        f"fields:\n{TEACHER}router: {{type: hardd}}\n",
        3,
        ["router.type", "unknown router type 'hardd'", "did you mean 'hard'?"],
        id="unknown-router",
    ),
    pytest.param(
        f"fields:\n{TEACHER}{TEACHER}",
        3,
        ["duplicate key 'teacher' (first at line 2)"],
        id="duplicate-key",
    ),
    pytest.param("- a\n- b\n", 1, ["a graph must be a mapping"], id="not-a-mapping"),
]


@pytest.mark.parametrize(("text", "line", "fragments"), BAD)
def test_bad_input_is_one_graph_error_naming_file_line_node_and_key(tmp_path, text, line, fragments):
    path = write(tmp_path, text)
    with pytest.raises(GraphError) as info:
        load_graph(path)
    message = str(info.value)
    assert f"{path}:{line}: " in message
    for fragment in fragments:
        assert fragment in message
    assert info.value.hint


def test_several_problems_are_reported_together(tmp_path):
    path = write(tmp_path, "fields:\n  a: {type: nope}\n  b: {type: scale, field: a, c: x}\n")
    with pytest.raises(GraphError) as info:
        load_graph(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 2 problems in the graph")
    assert f"{path}:2: fields.a.type: unknown source or operator type 'nope'" in message
    assert f"{path}:3: fields.b.c:" in message


@pytest.mark.parametrize(
    "tagged",
    [
        "!!python/object/apply:os.system ['touch {marker}']",
        "!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]",
        "!!python/object/new:pathlib.Path ['{marker}']",
        "!!python/name:os.system",
        "{{type: gaussian_mixture, classes: !!python/object/apply:os.system ['touch {marker}'], shape: [1]}}",
    ],
)
def test_python_tags_are_refused_and_nothing_is_executed(tmp_path, tagged):
    marker = tmp_path / "executed"
    path = write(tmp_path, "fields:\n  t: " + tagged.format(marker=marker) + "\n")
    with pytest.raises(GraphError, match=r"graph\.yaml:2: the tag 'tag:yaml\.org,2002:python/") as info:
        load_graph(path)
    assert "never constructs Python objects" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "the file is empty"),
        ("# only a comment\n", "the file is empty"),
        ("fields: {}\n", "fields: Dictionary should have at least 1 item"),
    ],
)
def test_empty_graphs_are_refused(tmp_path, text, expected):
    with pytest.raises(GraphError, match=expected):
        load_graph(write(tmp_path, text))


def test_missing_file_and_folder_are_refused(tmp_path):
    with pytest.raises(GraphError, match="no such graph file") as info:
        load_graph(tmp_path / "nope.yaml")
    assert info.value.hint == "check the path"
    with pytest.raises(GraphError, match=r"the graph file is a folder, not a regular file"):
        load_graph(tmp_path)


# -- --set overrides -------------------------------------------------------------------------------------


def test_overrides_set_values_and_create_nested_keys(tmp_path):
    path = write(tmp_path, GOOD)
    before = path.read_text()
    graph = load_graph(
        path,
        [
            "run.lr=1e-3",
            "flow.shift=1",
            "fields.guided.w=1.5",
            "fields.half.type=scale",
            "fields.half.field=guided",
            "fields.half.c=0.5",
            "routes.t2i.field=half",
            "student.lora.rank=4",
            "run.steps=7",
            "run.steps=9",
        ],
    )
    assert graph.spec.run.lr == 1e-3
    assert graph.spec.flow.shift == 1.0
    assert graph.nodes["guided"].params.w == 1.5
    assert graph.nodes["half"].registration.name == "scale"
    assert graph.deps("half") == ["guided"]
    assert graph.spec.routes["t2i"].field == "half"
    assert graph.spec.student.lora.rank == 4
    assert graph.spec.run.steps == 9
    assert path.read_text() == before


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("run.steps=abc", ["(--set run.steps=abc): run.steps:", "valid integer"]),
        ("fields.guided.w=[1, 2]", ["(--set fields.guided.w=[1, 2]): fields.guided.w:", "valid number"]),
        ("fields.guided.field=nobody", ["fields.guided.field: unknown field 'nobody'"]),
        ("fields.extra.c=2", ["(--set fields.extra.c=2): fields.extra.type: missing required key 'type'"]),
        ("run.colour=red", ["run.colour: unknown key 'colour'"]),
    ],
)
def test_overrides_are_type_checked_and_errors_name_the_override(tmp_path, override, fragments):
    with pytest.raises(GraphError) as info:
        load_graph(write(tmp_path, GOOD), [override])
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("run.steps", "expected KEY.PATH=VALUE"),
        ("=3", "expected KEY.PATH=VALUE"),
        ("run..steps=3", "expected KEY.PATH=VALUE"),
        ("run.lr=[1", "the value is not valid YAML"),
        ("fields.teacher.shape.x=1", "fields.teacher.shape is not a mapping, so it has no key 'x'"),
    ],
)
def test_invalid_override_syntax_is_a_graph_error(tmp_path, override, expected):
    with pytest.raises(GraphError, match="--set") as info:
        load_graph(write(tmp_path, GOOD), [override])
    assert expected in str(info.value)


# -- building ----------------------------------------------------------------------------------------------

PLUGIN_GRAPH = """\
fields:
  target: {type: example.constant, value: 0.5}
  away: {type: example.negate, field: target}
  back: {type: scale, field: away, c: -1.0}
"""


def test_a_plugin_field_type_from_yaml_builds_and_evaluates(use_plugins, tmp_path):
    use_plugins("example")
    graph = load_graph(write(tmp_path, PLUGIN_GRAPH))
    assert graph.nodes["target"].registration.plugin == "example"
    ctx = BuildContext(graph)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([1.0, 0.5, 0.25])
    cond = Cond()
    expected = (x - 0.5) / sigma.view(-1, 1, 1, 1)
    assert torch.allclose(ctx.field("target")(x, sigma, cond), expected)
    assert torch.allclose(ctx.field("away")(x, sigma, cond), -expected)
    assert torch.allclose(ctx.field("back")(x, sigma, cond), expected)
    one_step = x + (0.0 - 1.0) * ctx.field("target")(x, torch.ones(3), cond)
    assert torch.allclose(one_step, torch.full_like(x, 0.5))


def test_a_plugin_params_model_refuses_unknown_keys(use_plugins):
    use_plugins("example")
    with pytest.raises(GraphError, match=r"fields\.c\.colour: unknown key 'colour'; valid keys: value\n"):
        loads_graph("fields:\n  c: {type: example.constant, value: 1, colour: 2}\n")


def test_without_the_plugin_its_type_is_unknown():
    with pytest.raises(GraphError, match=r"unknown source or operator type 'example\.constant'"):
        loads_graph(PLUGIN_GRAPH)


class CountedParams(Params):
    explode: bool = False


class Counted:
    """A plugin whose source counts how often it is built, and can refuse to build."""

    def __init__(self) -> None:
        self.built = 0

    def build(self, params: CountedParams, ctx: Any) -> Any:
        if params.explode:
            raise RuntimeError("this node must never be built")
        self.built += 1
        return lambda x, sigma, cond: x

    @hookimpl
    def fieldkit_register_sources(self, register: Any) -> None:
        register("test.counted", self.build, CountedParams)


def test_building_is_lazy_and_shared_and_build_errors_name_the_node(tmp_path):
    counted = Counted()
    host = get_host()
    host.register(counted, "counted")
    try:
        text = (
            "fields:\n"
            "  base: {type: test.counted}\n"
            "  a: {type: scale, field: base, c: 2}\n"
            "  b: {type: sum, fields: [base, a]}\n"
            "  unused: {type: test.counted, explode: true}\n"
        )
        path = write(tmp_path, text)
        ctx = BuildContext(load_graph(path))
        assert counted.built == 0
        x = torch.ones(2, 1, 2, 2)
        v = ctx.field("b")(x, torch.full((2,), 0.5), Cond())
        assert torch.equal(v, 3 * x)
        assert counted.built == 1
        assert ctx.field("a") is ctx.field("a")
        with pytest.raises(GraphError) as info:
            ctx.field("unused")
        message = str(info.value)
        assert (
            f"{path}:5: fields.unused: source type 'test.counted' (plugin 'counted') failed to build"
            in message
        )
        assert "RuntimeError: this node must never be built" in message
    finally:
        host.unregister("counted")


def test_relative_paths_resolve_against_the_graph_folder(tmp_path):
    ctx = BuildContext(load_graph(write(tmp_path, GOOD)))
    assert ctx.path("weights/teacher.safetensors") == tmp_path / "weights" / "teacher.safetensors"
    assert ctx.path("/abs/w.safetensors") == Path("/abs/w.safetensors")


@pytest.mark.parametrize(
    "overrides",
    [[], ["run.optimizer={type: sgd, momentum: 0.9, nesterov: true}"], ["run.parallel=fsdp"]],
)
def test_a_runs_graph_json_with_every_default_written_out_validates_as_the_same_graph(overrides):
    """graph.json (the spec with every default) is a graph again: export and --checkpoint rebuild from it."""
    graph = load_graph(Path(__file__).parent.parent / "examples" / "quickstart" / "graph.yaml", overrides)
    dumped = json.loads(graph.spec.model_dump_json())
    again = loads_graph(json.dumps(dumped))
    assert again.spec == graph.spec
