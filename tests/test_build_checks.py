"""Plugin mistakes are caught when the graph is built, with the node and its YAML line: a factory that
returns the wrong kind, a field whose output does not fit the route's data, a label the student has no class
for (refused by validation). And the layers point one way: validating YAML or scoring samples imports no
training code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from torch import Tensor

from fieldkit import Cond, loads_graph
from fieldkit.distill.engine import Engine
from fieldkit.errors import GraphError, PluginError
from fieldkit.field import ModuleField
from fieldkit.graph import BuildContext
from fieldkit.plugins import Params, hookimpl

GRAPH = """\
fields:
  teacher: {type: affine, seed: 1}
  init: {type: affine, seed: 2}
routes:
  r:
    field: teacher
    data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}
student: {init: init}
flow: {steps: 4}
run: {steps: 2, batch_size: 4, device: cpu}
"""


def build(text: str) -> Engine:
    return Engine(loads_graph(text), write=False, show_progress=False)


class Cropping(ModuleField):
    """A field that forgets a row of pixels: its velocity is shaped ``[B, C, H - 1, W]``."""

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        return x[:, :, 1:]


class Mistakes:
    """A plugin whose factories return the wrong things."""

    @hookimpl
    def fieldkit_register_sources(self, register):
        register("mistake.cropping", lambda p, ctx: Cropping(), Params)

    @hookimpl
    def fieldkit_register_datasets(self, register):
        register("mistake.list", lambda p, ctx: [1, 2, 3], Params)

    @hookimpl
    def fieldkit_register_methods(self, register):
        register("mistake.method", lambda p, ctx: "danceopd", Params)


@pytest.fixture
def mistakes(distill_world):
    distill_world.register(Mistakes(), "mistakes")
    try:
        yield
    finally:
        distill_world.unregister("mistakes")


def test_a_factory_that_returns_the_wrong_kind_is_one_plugin_error(mistakes):
    text = GRAPH.replace(
        "data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}", "data: {type: mistake.list}"
    )
    with pytest.raises(PluginError) as err:
        build(text)
    message = str(err.value)
    assert "<string>:7: routes.r.data" in message
    assert "dataset type 'mistake.list' (plugin 'mistakes') built list, which is not a data bucket" in message
    with pytest.raises(PluginError, match=r"method type .mistake.method. .* built str, which is not a"):
        build(GRAPH + "method: {type: mistake.method}\n")
    graph = loads_graph(text)
    with pytest.raises(PluginError, match=r"routes\.r\.data: dataset type 'mistake\.list'"):
        BuildContext(graph).build(("routes", "r", "data"), graph.datasets["r"])


def test_a_field_whose_output_does_not_fit_the_route_names_the_node_and_line(mistakes):
    text = GRAPH.replace("teacher: {type: affine, seed: 1}", "teacher: {type: mistake.cropping}")
    with pytest.raises(PluginError) as err:
        build(text)
    message = str(err.value)
    assert message.startswith(
        "<string>:2: fields.teacher: source type 'mistake.cropping' (plugin 'mistakes'): returned"
    )
    assert "shape [2, 1, 3, 4] for states of shape [2, 1, 4, 4]" in message
    assert "data shape is [1, 4, 4], <string>:7: routes.r.data" in message


def test_a_field_that_fails_on_the_route_data_names_the_node_and_line(distill_world):
    # The example: a teacher for 8x8 images on a route whose data is 4x4.
    text = GRAPH.replace(
        "teacher: {type: affine, seed: 1}", "teacher: {type: gaussian_mixture, classes: 3, shape: [1, 8, 8]}"
    )
    with pytest.raises(GraphError) as err:
        build(text)
    message = str(err.value)
    assert message.startswith(
        "<string>:2: fields.teacher: source type 'gaussian_mixture' (plugin 'fieldkit')"
    )
    assert "failed on states of shape [2, 1, 4, 4] (route 'r', whose data shape is [1, 4, 4]" in message
    assert "RuntimeError" in message and "unexpected" not in message


def test_a_label_outside_the_students_classes_is_located(distill_world):
    mmdit = (
        "init: {type: fieldkit.mmdit, config: {sample_size: [4, 4], patch_size: 2, hidden: 16, depth: 1, "
        "heads: 2, text_dim: 8, pooled_dim: 8, num_classes: 2}}"
    )
    text = GRAPH.replace("init: {type: affine, seed: 2}", mmdit)
    with pytest.raises(GraphError) as err:
        build(text)
    message = str(err.value)
    assert message.startswith("<string>:7: routes.r.data: draws labels 0..2, but field 'init' takes only 2")
    build(text.replace("num_classes: 2", "num_classes: 3"))  # labels 0..2 fit three classes


@pytest.mark.parametrize(
    "code",
    [
        # Validating a graph (the builtin plugin's types included) reads no training code.
        "import fieldkit; fieldkit.loads_graph(GRAPH)",
        # Scoring and drawing samples needs no engine.
        "import fieldkit.eval.report, fieldkit.eval.grid",
    ],
)
def test_layers_point_one_way(code):
    graph = (
        "fields: {t: {type: gaussian_mixture, classes: 2, shape: [1, 2, 2]}}\n"
        "routes: {r: {field: t, data: {type: gaussian_mixture, classes: 2, shape: [1, 2, 2]}}}\n"
    )
    script = f"import sys\nGRAPH = {graph!r}\n{code}\nprint([m for m in sys.modules if 'distill' in m])"
    env = {**os.environ, "FIELDKIT_LOAD_PLUGINS": ""}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
