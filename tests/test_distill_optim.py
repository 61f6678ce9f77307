"""The optimizer choice and the learning-rate schedule: closed-form lr values at given steps, the lr the
engine logs per update, a resumed run continuing the same lr curve, and bad settings refused at load."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fieldkit import loads_graph
from fieldkit.distill.engine import Engine
from fieldkit.distill.optim import lr_factor, make_lr_schedule, make_optimizer
from fieldkit.errors import GraphError
from fieldkit.graph.schema import RunSpec

GRAPH = """
fields:
  teacher: {type: affine, seed: 1}
  init: {type: affine, seed: 2}
routes:
  a: {field: teacher, data: {type: marked, marker: 1, classes: 3}}
student: {init: init}
flow: {steps: 4}
run: {steps: 10, batch_size: 4, lr: 0.01, log_every: 1, device: cpu, lr_schedule: cosine, warmup_steps: 3}
"""


def engine(out: Path, *overrides: str, resume: str | None = None) -> Engine:
    graph = loads_graph(textwrap.dedent(GRAPH), overrides)
    return Engine(graph, out=out, resume=resume, show_progress=False)


def scheduled_lrs(run: RunSpec) -> list[float]:
    """The lr of each update when the schedule is stepped once per update, as the engine does."""
    optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(2))], run)
    schedule = make_lr_schedule(optimizer, run)
    lrs = []
    for _ in range(run.steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return lrs


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        # lr 1, warmup 2 of 6 updates: k/2 while warming up, then the decay over the remaining 4.
        ("constant", [0.0, 0.5, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.0, 0.5, 1.0, 0.75, 0.5, 0.25]),
        (
            "cosine",
            [0.0, 0.5, 1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5, (1 + math.cos(3 * math.pi / 4)) / 2],
        ),
    ],
)
def test_schedules_give_their_closed_form_lr_at_each_update(schedule, expected):
    run = RunSpec(steps=6, lr=1.0, lr_schedule=schedule, warmup_steps=2, device="cpu")
    assert scheduled_lrs(run) == pytest.approx(expected, abs=1e-12)


def test_without_warmup_the_first_update_uses_the_full_lr():
    run = RunSpec(steps=4, lr=0.5, lr_schedule="linear", device="cpu")
    assert scheduled_lrs(run) == pytest.approx([0.5, 0.375, 0.25, 0.125])


@given(
    schedule=st.sampled_from(["constant", "cosine", "linear"]),
    total=st.integers(2, 200),
    data=st.data(),
)
def test_the_factor_ramps_then_never_rises(schedule, total, data):
    warmup = data.draw(st.integers(0, total - 1))
    factors = [lr_factor(schedule, k, warmup, total) for k in range(total)]
    assert all(0.0 <= f <= 1.0 for f in factors)
    assert factors[:warmup] == sorted(factors[:warmup])
    assert factors[warmup] == 1.0
    assert factors[warmup:] == sorted(factors[warmup:], reverse=True)


@pytest.mark.parametrize(
    ("optimizer", "cls"),
    [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("adafactor", torch.optim.Adafactor)],
)
def test_run_optimizer_selects_the_torch_optimizer(optimizer, cls):
    run = RunSpec(optimizer={"type": optimizer}, lr=0.3, weight_decay=0.01)
    made = make_optimizer([torch.nn.Parameter(torch.zeros(2))], run)
    assert type(made) is cls
    assert made.param_groups[0]["lr"] == 0.3 and made.param_groups[0]["weight_decay"] == 0.01


def test_optimizer_params_reach_torch():
    sgd = make_optimizer(
        [torch.nn.Parameter(torch.zeros(2))], RunSpec(optimizer={"type": "sgd", "momentum": 0.9})
    )
    assert sgd.param_groups[0]["momentum"] == 0.9
    adamw = make_optimizer([torch.nn.Parameter(torch.zeros(2))], RunSpec(optimizer={"betas": [0.5, 0.9]}))
    assert adamw.param_groups[0]["betas"] == (0.5, 0.9)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("run.optimizer={type: adamw, momentum: 0.9}", "'momentum' is a parameter of sgd, not of adamw"),
        ("run.optimizer={type: sgd, nesterov: true}", "nesterov needs momentum > 0"),
        ("run.optimizer={betas: [0.9, 1.0]}", "betas must each be in [0, 1)"),
        ("run.optimizer={type: lion}", "'adamw', 'sgd' or 'adafactor'"),
        ("run.lr_schedule=exponential", "'constant', 'cosine' or 'linear'"),
        ("run.warmup_steps=10", "warmup_steps (10) must be below steps (10)"),
    ],
)
def test_bad_optimizer_or_schedule_settings_are_refused_at_load(override, message):
    with pytest.raises(GraphError) as info:
        loads_graph(textwrap.dedent(GRAPH), [override])
    assert message in str(info.value)
    assert "--set" in str(info.value)


def test_the_engine_logs_the_scheduled_lr_of_each_update(distill_world, tmp_path):
    result = engine(tmp_path / "run").run()
    expected = scheduled_lrs(RunSpec(steps=10, lr=0.01, lr_schedule="cosine", warmup_steps=3))
    assert [r["lr"] for r in result.history] == pytest.approx(expected, abs=1e-15)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in logged] == pytest.approx(expected, abs=1e-15)


def test_a_resumed_run_continues_the_same_lr_curve(distill_world, tmp_path):
    whole = engine(tmp_path / "straight").run()
    engine(tmp_path / "split", "run.checkpoint_every=4", "run.steps=10").run()
    # Resume from step 4 (not the end): drop the newer checkpoints.
    for newer in ("step-00000008", "step-00000010"):
        for f in (tmp_path / "split" / "checkpoints" / newer).iterdir():
            f.unlink()
        (tmp_path / "split" / "checkpoints" / newer).rmdir()
    resumed = engine(tmp_path / "split", resume="latest")
    assert resumed.step == 4
    rest = resumed.run()
    assert [r["lr"] for r in rest.history] == pytest.approx([r["lr"] for r in whole.history[4:]], abs=1e-15)
    for name, value in whole.student.state_dict().items():
        torch.testing.assert_close(rest.student.state_dict()[name], value, rtol=1e-6, atol=1e-7)


def test_a_resumed_run_follows_a_new_lr_from_the_step_it_resumes_at(distill_world, tmp_path):
    engine(tmp_path / "run", "run.steps=4").run()
    rest = engine(tmp_path / "run", "run.lr=0.02", resume="latest").run()
    expected = scheduled_lrs(RunSpec(steps=10, lr=0.02, lr_schedule="cosine", warmup_steps=3))[4:]
    assert [r["lr"] for r in rest.history] == pytest.approx(expected, abs=1e-15)
