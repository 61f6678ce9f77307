"""What plugins return is checked where it enters the core, and a mistake is one PluginError that names the
graph line, the key, the type and the plugin: router plans, method losses, metric values (run once before
training), bucket batches and field outputs. Routers get the step and keep state across ``--resume``."""

from __future__ import annotations

import textwrap
from typing import Any

import numpy as np
import pytest
import torch
from test_build_checks import GRAPH
from torch import Tensor, nn

from fieldkit import Cond, loads_graph
from fieldkit.data import Batch
from fieldkit.distill.engine import Engine
from fieldkit.errors import PluginError
from fieldkit.field import ModuleField
from fieldkit.plugin_outputs import check_batch, check_loss, check_metric_values, check_plan, check_velocity
from fieldkit.plugins import Params, hookimpl
from fieldkit.protocols import LossInputs, LossOutput, Route


class Mode(Params):
    mode: str = ""


class BrokenRouter:
    def __init__(self, routes: list[Route], mode: str) -> None:
        self._routes, self.mode = routes, mode

    @property
    def routes(self) -> list[Route]:
        return self._routes

    def plan(self, micro_batches: int, generator: torch.Generator, step: int) -> Any:
        return {"minus_one": [-1], "float": [0.0], "beyond": [1], "empty": [], "array": np.zeros(1)}[
            self.mode
        ]

    def target(self, index: int) -> Any:
        return self._routes[index].field


class BrokenMethod:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.elsewhere = nn.Parameter(torch.ones(()))

    def rollout_steps(self, default: int) -> int:
        return default

    def loss(self, inputs: LossInputs) -> Any:
        n = inputs.batch.cond.batch_size or 1
        x = torch.randn((n, *inputs.shape), generator=inputs.generator)
        v = inputs.student(x, torch.full((n,), 0.5), inputs.batch.cond)
        loss = v.square().mean()
        return {
            "detached": LossOutput(loss.detach()),
            "vector": LossOutput(v.square().flatten(1).mean(1)),
            "bare": loss,
            "elsewhere": LossOutput(2.0 * self.elsewhere),
            "zero": LossOutput(0.0 * loss),
        }[self.mode]


class BrokenMetric:
    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, samples: Tensor, batch: Batch) -> Any:
        if self.mode == "raises":
            raise ZeroDivisionError("division by zero")
        return {
            "words": {"score": "high"},
            "list": [0.5],
            "numpy": {"score": np.float32(0.25), "count": np.int64(3)},
            "tensor": {"score": torch.tensor(0.5)},
        }[self.mode]


class BrokenBucket:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.shape = (1, 4, 4)

    def sample(self, batch_size: int, generator: torch.Generator) -> Any:
        label = torch.randint(3, (batch_size,), generator=generator)
        if self.mode == "tuple":
            return Cond(label=label), torch.zeros(batch_size, *self.shape)
        return Batch(Cond(label=label[:-1]))  # "short": one sample too few


class BrokenField(ModuleField):
    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Any:
        return x.numpy() if self.mode == "numpy" else x.long()


class Broken:
    """A plugin whose objects build fine and return the wrong things."""

    @hookimpl
    def fieldkit_register_routers(self, register):
        register("broken.router", lambda p, routes, ctx: BrokenRouter(routes, p.mode), Mode)

    @hookimpl
    def fieldkit_register_methods(self, register):
        register("broken.method", lambda p, ctx: BrokenMethod(p.mode), Mode)

    @hookimpl
    def fieldkit_register_metrics(self, register):
        register("broken.metric", lambda p, ctx: BrokenMetric(p.mode), Mode)

    @hookimpl
    def fieldkit_register_datasets(self, register):
        register("broken.data", lambda p, ctx: BrokenBucket(p.mode), Mode)

    @hookimpl
    def fieldkit_register_sources(self, register):
        register("broken.field", lambda p, ctx: BrokenField(p.mode), Mode)


@pytest.fixture
def broken(distill_world):
    distill_world.register(Broken(), "broken")
    try:
        yield
    finally:
        distill_world.unregister("broken")


def train(text: str) -> Engine:
    e = Engine(loads_graph(textwrap.dedent(text)), write=False, show_progress=False)
    for _ in e.steps():
        pass
    return e


def failure(text: str) -> str:
    with pytest.raises(PluginError) as err:
        train(text)
    return err.value.message


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("minus_one", "plan() entry 0 is -1, outside the 1 route(s) [0, 1)"),
        ("float", "plan() entry 0 is 0.0 (float), not an int"),
        ("beyond", "plan() entry 0 is 1, outside the 1 route(s)"),
        ("empty", "plan() returned 0 route indices for an update of 1 micro-batch(es)"),
        ("array", "plan() returned numpy.ndarray, not a list of route indices"),
    ],
)
def test_a_router_plan_that_does_not_fit_is_located(broken, mode, message):
    got = failure(GRAPH + f"router: {{type: broken.router, mode: {mode}}}\n")
    assert got.startswith("<string>:11: router: router type 'broken.router' (plugin 'broken'): ")
    assert message in got


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("detached", "its loss has no gradient"),
        ("vector", "its loss is a torch.float32 tensor of shape [4], not a floating-point scalar tensor"),
        ("bare", "loss() returned a torch.float32 tensor of shape [], not a LossOutput"),
        ("elsewhere", "its loss's gradient does not reach the student"),
    ],
)
def test_a_method_loss_that_cannot_train_the_student_is_located(broken, mode, message):
    got = failure(GRAPH + f"method: {{type: broken.method, mode: {mode}}}\n")
    assert got.startswith("<string>:11: method: method type 'broken.method' (plugin 'broken'): ")
    assert message in got


def test_an_exactly_zero_gradient_norm_is_a_warning_that_names_the_method(broken, capsys):
    e = train(GRAPH + "method: {type: broken.method, mode: zero}\n")
    assert e.step == 2 and all(r["grad_norm"] == 0.0 for r in e.history)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("gradient norm of update") == 1  # once, not per update
    assert "method type 'broken.method' (plugin 'broken'): the gradient norm of update 1 is exactly 0" in err


def with_metric(mode: str) -> str:
    return GRAPH.replace(
        "    data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}\n",
        "    data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}\n"
        f"    metrics: [{{type: broken.metric, mode: {mode}}}]\n",
    )


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("words", "value 'score' is str, not a number"),
        ("list", "returned list, not a mapping of names to numbers"),
        ("raises", "failed on 2 samples of route 'r': ZeroDivisionError: division by zero"),
    ],
)
def test_a_broken_metric_fails_before_training(broken, mode, message):
    with pytest.raises(PluginError) as err:
        Engine(loads_graph(with_metric(mode)), write=False, show_progress=False)  # nothing trained yet
    got = err.value.message
    assert got.startswith("<string>:8: routes.r.metrics.0: metric type 'broken.metric' (plugin 'broken'): ")
    assert message in got


@pytest.mark.parametrize("mode", ["numpy", "tensor"])
def test_numpy_and_tensor_scalars_are_metric_values(broken, tmp_path, mode):
    e = Engine(loads_graph(with_metric(mode)), out=tmp_path / "run", show_progress=False)
    result = e.run()
    student = next(s for s in result.scores if s.field == "student")
    assert {k: type(v) for k, v in student.values.items()} == {
        k: float for k in ({"score", "count"} if mode == "numpy" else {"score"})
    }


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("tuple", "sample(2) returned tuple, not a Batch"),
        ("short", "sample(2) returned a batch that does not fit: its cond has 1 rows"),
    ],
)
def test_a_bucket_batch_that_does_not_fit_is_located(broken, mode, message):
    text = GRAPH.replace(
        "{type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}", f"{{type: broken.data, mode: {mode}}}"
    )
    got = failure(text)
    assert got.startswith("<string>:7: routes.r.data: dataset type 'broken.data' (plugin 'broken'): ")
    assert message in got


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("numpy", "returned numpy.ndarray for states of shape [2, 1, 4, 4]"),
        ("long", "returned a torch.int64 tensor of shape [2, 1, 4, 4] for states of shape [2, 1, 4, 4]"),
    ],
)
def test_a_field_output_that_is_not_a_velocity_is_located(broken, mode, message):
    got = failure(
        GRAPH.replace("teacher: {type: affine, seed: 1}", f"teacher: {{type: broken.field, mode: {mode}}}")
    )
    assert got.startswith("<string>:2: fields.teacher: source type 'broken.field' (plugin 'broken'): ")
    assert message in got and "route 'r', whose data shape is [1, 4, 4]" in got


def test_the_checkers_pass_what_fits_and_return_it_plainly():
    assert check_plan([0, np.int64(1)], 2, 2, "r") == [0, 1] and check_plan([0, 1], 2, 1, "r") == [0, 1]
    assert check_metric_values({"a": np.float64(0.5), "b": torch.tensor([2]), "c": 1}, "m") == {
        "a": 0.5,
        "b": 2.0,
        "c": 1.0,
    }
    batch = Batch(Cond(label=torch.zeros(3)), torch.zeros(3, 1, 2, 2))
    assert check_batch(batch, 3, "d") is batch and check_batch(Batch(Cond()), 3, "d").cond.batch_size is None
    x = torch.zeros(2, 1, 2, 2)
    assert check_velocity(x, x, "f") is x
    out = LossOutput(torch.ones((), requires_grad=True))
    assert check_loss(out, "m") is out
    with pytest.raises(PluginError, match=r"^m: value .n. is NoneType, not a number"):
        check_metric_values({"n": None}, "m")
    with pytest.raises(PluginError, match=r"plan.. entry 0 is True"):
        check_plan([True], 2, 1, "r")


class Curriculum:
    """Route 0 for the first 3 updates, then route 1; it counts the plans it made and keeps the count in
    checkpoints, so the count is the step even after a resume."""

    def __init__(self, routes: list[Route]) -> None:
        self._routes, self.planned = routes, 0

    @property
    def routes(self) -> list[Route]:
        return self._routes

    def plan(self, micro_batches: int, generator: torch.Generator, step: int) -> list[int]:
        assert self.planned == step, (self.planned, step)
        self.planned += 1
        return [0 if step < 3 else 1] * micro_batches

    def target(self, index: int) -> Any:
        return self._routes[index].field

    def checkpoint_state(self) -> dict[str, Any]:
        return {"planned": self.planned}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.planned = int(state["planned"])


class Curricula:
    @hookimpl
    def fieldkit_register_routers(self, register):
        register("curriculum", lambda p, routes, ctx: Curriculum(routes), Params)


TWO = """\
fields:
  teacher: {type: affine, seed: 1}
  init: {type: affine, seed: 2}
routes:
  easy: {field: teacher, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}}
  hard: {field: teacher, data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4], seed: 1}}
student: {init: init}
router: {type: curriculum}
flow: {steps: 4}
run: {steps: 6, batch_size: 4, device: cpu, log_every: 1}
"""


def test_a_curriculum_router_follows_the_step_across_a_resume(distill_world, tmp_path):
    distill_world.register(Curricula(), "curricula")
    try:
        whole = Engine(loads_graph(TWO), out=tmp_path / "whole", show_progress=False).run()
        Engine(loads_graph(TWO, ["run.steps=2"]), out=tmp_path / "split", show_progress=False).run()
        rest = Engine(loads_graph(TWO), out=tmp_path / "split", resume="latest", show_progress=False)
        assert isinstance(rest.session.router, Curriculum) and rest.session.router.planned == 2
        rest_result = rest.run()
    finally:
        distill_world.unregister("curricula")
    assert [r["route"] for r in whole.history] == ["easy"] * 3 + ["hard"] * 3
    assert [r["route"] for r in rest_result.history] == ["easy"] + ["hard"] * 3
    for name, value in whole.student.state_dict().items():
        assert torch.equal(rest_result.student.state_dict()[name], value)
