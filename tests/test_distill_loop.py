"""The engine's public loop: ``Engine.steps`` yields one report per update and calls its callbacks' hooks in
order; a callback or the loop body can stop it; the counters belong to the engine; ``Engine.run`` is the
same loop with the default callbacks, whose checkpoint and evaluation events reach extra callbacks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from fieldkit import loads_graph
from fieldkit.distill.callbacks import Callback, StepReport
from fieldkit.distill.engine import Engine
from fieldkit.errors import FieldkitError
from fieldkit.eval.report import Score

GRAPH = """
fields:
  teacher: {type: affine, seed: 1}
  init: {type: affine, seed: 2}
routes:
  r:
    field: teacher
    data: {type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}
    metrics: [{type: gaussian_mixture, classes: 3, shape: [1, 4, 4]}]
student: {init: init}
flow: {steps: 4}
run: {steps: 6, batch_size: 4, lr: 0.05, device: cpu, eval_samples: 8}
"""


def engine(*overrides: str, **kwargs) -> Engine:
    kwargs.setdefault("write", False)
    return Engine(loads_graph(textwrap.dedent(GRAPH), overrides), show_progress=False, **kwargs)


class Recorder(Callback):
    """Keeps every hook call as ``(hook, detail)``; optionally requests a stop at one step."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: list[tuple[str, object]] = []
        self.stop_at = stop_at

    def on_run_start(self, engine: Engine) -> None:
        self.calls.append(("start", engine.step))

    def on_update_end(self, engine: Engine, report: StepReport) -> None:
        self.calls.append(("update", report.step))
        if report.step == self.stop_at:
            engine.request_stop("enough")

    def on_checkpoint(self, engine: Engine, path: Path) -> None:
        self.calls.append(("checkpoint", path.name))
        assert path.is_dir()

    def on_evaluation(self, engine: Engine, scores: list[Score]) -> None:
        self.calls.append(("evaluation", sorted(s.field for s in scores)))

    def on_run_end(self, engine: Engine) -> None:
        self.calls.append(("end", engine.step))

    def teardown(self, engine: Engine) -> None:
        self.calls.append(("teardown", engine.step))


def test_steps_yields_a_report_per_update_and_calls_hooks_in_order(distill_world):
    e, rec = engine(), Recorder()
    reports = list(e.steps([rec]))
    assert [r.step for r in reports] == [1, 2, 3, 4, 5, 6]
    assert all(r.applied and r.bad_steps == 0 for r in reports)
    assert [r.record for r in reports] == e.history
    assert rec.calls == [("start", 0), *[("update", i) for i in range(1, 7)], ("end", 6), ("teardown", 6)]


def test_a_callback_stops_the_run_and_its_end_hooks_still_run(distill_world):
    e, rec = engine(), Recorder(stop_at=2)
    assert [r.step for r in e.steps([rec])] == [1, 2]
    assert rec.calls[-2:] == [("end", 2), ("teardown", 2)] and e.step == 2


def test_breaking_out_of_the_loop_tears_down_without_ending_the_run(distill_world):
    e, rec = engine(), Recorder()
    for report in e.steps([rec]):
        if report.step == 3:
            break
    assert e.step == 3
    assert [name for name, _ in rec.calls] == ["start", "update", "update", "update", "teardown"]


def test_the_counters_belong_to_the_engine(distill_world):
    e = engine()
    with pytest.raises(AttributeError):
        e.step = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        e.bad_steps += 1  # type: ignore[misc]


def test_the_bad_step_policy_lives_in_the_loop(distill_world):
    e, rec = engine("run.max_bad_steps=2"), Recorder()
    teacher = e.session.ctx.field("teacher")
    teacher.calls = 0  # count update attempts only (the engine's build-time check called it once)
    teacher.nan_on = lambda call: call > 2
    reports: list[StepReport] = []
    with pytest.raises(FieldkitError, match="2 optimizer steps in a row"):
        for report in e.steps([rec]):
            reports.append(report)
    # Two good updates, then one skipped one is reported; the second skipped one ends the run.
    assert [(r.step, r.applied, r.bad_steps) for r in reports] == [(1, True, 0), (2, True, 0), (2, False, 1)]
    assert e.bad_steps == 2 and rec.calls[-1] == ("teardown", 2)
    assert "end" not in [name for name, _ in rec.calls]


def test_run_is_the_loop_with_default_callbacks_whose_events_reach_extra_ones(distill_world, tmp_path):
    rec = Recorder()
    res = engine("run.checkpoint_every=4", write=True, out=tmp_path / "run").run([rec])
    names = [name for name, _ in rec.calls]
    assert names[0] == "start" and names[-1] == "teardown" and names.count("update") == 6
    # The periodic checkpoint, then at the end: checkpoint, evaluation (the defaults run before extras).
    assert ("checkpoint", "step-00000004") in rec.calls
    assert rec.calls[-4:] == [
        ("checkpoint", "step-00000006"),
        ("evaluation", ["student", "teacher"]),
        ("end", 6),
        ("teardown", 6),
    ]
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    assert {(row["field"], row["route"]) for row in rows} == {("teacher", "r"), ("student", "r")}
    assert res.scores and res.checkpoint == tmp_path / "run" / "checkpoints" / "step-00000006"
