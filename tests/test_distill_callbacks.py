"""The run's outputs as callbacks: a user's callback replaces a default one by name (no Engine subclass),
what a callback makes is published to the others (the trackers get the grids the grid callback drew, from
whichever callback drew them), callbacks keep state across ``--resume``, a resumed run's metrics.jsonl is
the uninterrupted run's, the pass counter counts training passes only, and a plugin's ``sys.exit`` is an
error."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_distill_loop import engine

from fieldkit.distill.callbacks import Callback, RunView, SampleGrid, StepReport
from fieldkit.distill.outputs import default_callbacks
from fieldkit.distill.trackers import Trackers
from fieldkit.errors import PluginError
from fieldkit.flow import generate


class MeanGrids(Callback):
    """A user's grid callback: one grey tile per route holding the student's mean sample, every 2 steps;
    it writes no PNG and publishes what it drew."""

    def __init__(self) -> None:
        self.drawn: list[int] = []

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        if report.applied and report.step % 2 == 0:
            model = run.inference_model()
            grids = []
            for route in run.routes:
                batch = route.data.sample(4, torch.Generator().manual_seed(0))
                noise = torch.Generator().manual_seed(0)
                x = generate(
                    model, batch.cond, tuple(route.data.shape), run.sigmas(route.name), noise, run.device
                )
                level = int(((x.mean().clamp(-1, 1) + 1) * 127.5).item())
                grids.append(SampleGrid(route.name, run.step, np.full((8, 16, 3), level, dtype=np.uint8)))
            self.drawn.append(run.step)
            run.publish_samples(grids)


class Seen(Callback):
    """Keeps what other callbacks published."""

    def __init__(self) -> None:
        self.grids: list[tuple[str, int]] = []
        self.checkpoints: list[str] = []

    def on_samples(self, run: RunView, grids: Sequence[SampleGrid]) -> None:
        self.grids += [(g.route, g.step) for g in grids]

    def on_checkpoint(self, run: RunView, path: Path) -> None:
        self.checkpoints.append(path.name)


def test_a_users_grid_callback_replaces_the_default_one_by_name(distill_world, tmp_path):
    mine, seen = MeanGrids(), Seen()
    out = tmp_path / "run"
    engine("run.sample_every=1", write=True, out=out).run([seen], replace={"samples": mine})
    assert mine.drawn == [2, 4, 6]
    assert seen.grids == [("r", 2), ("r", 4), ("r", 6)]  # published to the other callbacks
    assert not (out / "samples").exists()  # the default grids (every step, as PNG) did not run
    assert (out / "student").is_dir() and (out / "results.json").is_file()  # the other defaults did
    with pytest.raises(
        ValueError, match="no default callback named grids; the names: console, log, checkpoints, samples"
    ):
        default_callbacks(grids=mine)


def test_the_final_checkpoint_is_on_disk_before_an_output_that_fails(distill_world, tmp_path):
    """A grid that fails at the end of the run (out of memory, say): the run fails, and the trained weights
    of its last step are already in the final checkpoint, so ``--resume latest`` loses nothing."""

    class FailingGrid(Callback):
        def on_run_end(self, run: RunView) -> None:
            raise MemoryError("the grid did not fit")

    out = tmp_path / "run"
    with pytest.raises(MemoryError):
        engine(write=True, out=out).run(replace={"samples": FailingGrid()})
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith(".")) == [
        "step-00000006"
    ]


def test_the_default_grids_are_published_once_per_step(distill_world, tmp_path):
    seen = Seen()
    engine("run.sample_every=3", write=True, out=tmp_path / "run").run([seen])
    # Steps 3 and 6; the end of the run (step 6) draws nothing again.
    assert seen.grids == [("r", 3), ("r", 6)]
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png")) == [
        "step-00000003-r.png",
        "step-00000006-r.png",
    ]


def test_a_routes_field_row_is_drawn_once_per_run_and_equals_a_fresh_draw(
    distill_world, tmp_path, monkeypatch
):
    """Grids at steps 3 and 6: the student's row is drawn at each, the (frozen) teacher's once, and the
    kept row is the one a fresh draw gives."""
    from fieldkit.distill import outputs

    calls: list[tuple[Any, ...]] = []

    def counting(
        field: Any, cond: Any, shape: Any, sigmas: Any, noise: Any, device: Any, rows: Any
    ) -> torch.Tensor:
        calls.append((field, cond, shape, sigmas, device, rows))
        return generate(field, cond, shape, sigmas, noise, device, rows)

    monkeypatch.setattr(outputs, "generate", counting)
    grids = outputs.SampleGrids()
    run = engine("run.sample_every=3", write=True, out=tmp_path / "run")
    run.run(replace={"samples": grids})
    teacher = run.session.router.routes[0].field
    assert [c[0] is teacher for c in calls] == [True, False, False]  # teacher and student, then student
    field, cond, shape, sigmas, device, rows = calls[0]
    assert rows == run.session.run_spec.batch_size  # a grid is drawn a training micro-batch at a time
    fresh = generate(field, cond, shape, sigmas, torch.Generator().manual_seed(grids.seed), device, rows)
    assert torch.equal(grids.field_rows["r"], fresh)


def test_grid_samples_sets_a_grids_width_and_zero_draws_none(distill_world, tmp_path):
    """``run.grid_samples`` conditions per grid (its PNG one column each); 0: no grid at all, the other
    outputs as usual; with ``sample_every`` it is refused, naming both keys."""
    from PIL import Image

    from fieldkit.errors import GraphError

    def width(n: str) -> int:
        seen = Seen()
        out = tmp_path / f"run-{n}"
        engine(f"run.grid_samples={n}", write=True, out=out).run([seen])
        return Image.open(out / "samples" / "step-00000006-r.png").width

    w2, w3, w5 = width("2"), width("3"), width("5")
    assert w3 > w2 and w5 - w3 == 2 * (w3 - w2)  # one column per condition
    seen = Seen()
    out = tmp_path / "run-0"
    engine("run.grid_samples=0", write=True, out=out).run([seen])
    assert seen.grids == [] and not (out / "samples").exists()
    assert (out / "student").is_dir() and (out / "results.json").is_file()
    with pytest.raises(GraphError, match=r"run.sample_every: 2 .* run.grid_samples: 0 turns grids off"):
        engine("run.grid_samples=0", "run.sample_every=2")


def test_a_steps_callbacks_share_one_inference_copy_and_training_holds_none(distill_world, tmp_path):
    """The grids, the export and the evaluation at the end of a run get the same copy (built once); each
    step's callbacks get a copy of that step's weights, and none is kept while training goes on."""
    from fieldkit.distill.view import EngineView

    class Copies(Callback):
        def __init__(self) -> None:
            self.at_end: list[int] = []
            self.per_step: list[torch.nn.Module] = []
            self.held: list[bool] = []

        def on_update_end(self, run: RunView, report: StepReport) -> None:
            assert isinstance(run, EngineView)
            self.held.append(run._copy is not None)  # none left over from the step before
            first, again = run.inference_model(), run.inference_model()
            assert first is again
            self.per_step.append(first)

        def on_run_end(self, run: RunView) -> None:
            self.at_end.append(id(run.inference_model()))

    first, last = Copies(), Copies()
    built: list[int] = []
    run = engine(write=True, out=tmp_path / "run")
    session_copy = run.session.inference_model

    def counted() -> torch.nn.Module:
        built.append(run.session.step)
        return session_copy()

    run.session.inference_model = counted  # type: ignore[method-assign]
    run.run([last], replace={"console": first})
    assert first.held == [False] * 6 and len(built) == 6 + 1  # one copy per step, one for the whole end
    assert len(set(first.at_end + last.at_end)) == 1  # the grids, export and evaluation between them too
    weights = [next(m.parameters()).detach() for m in first.per_step]
    assert not any(torch.equal(a, b) for a, b in itertools.pairwise(weights))


def test_trackers_log_the_grids_a_users_grid_callback_publishes(distill_world, tmp_path):
    pytest.importorskip("tensorboard", reason="pip install 'fieldkit[trackers]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    # The trackers come before the grid callback here: the grids reach them whatever the order, and no PNG
    # is read (this grid callback writes none).
    run = engine("run.report_to=[tensorboard]", "run.log_every=2", write=True, out=out)
    for _ in run.steps([Trackers(), *default_callbacks(samples=MeanGrids(), trackers=None)]):
        pass
    events = EventAccumulator(str(out / "trackers" / "fieldkit" / "run"), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("samples/r")
    assert [e.step for e in images] == [2, 4, 6]
    assert all((e.width, e.height) == (16, 8) for e in images)


class Counter(Callback):
    """State kept in checkpoints: the number of updates this callback saw, over every session."""

    def __init__(self) -> None:
        self.updates = 0
        self.restored: dict[str, Any] | None = None

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state
        self.updates = int(state["updates"])


def test_a_callbacks_state_is_kept_in_checkpoints_and_restored_on_resume(distill_world, tmp_path):
    out = tmp_path / "run"
    first = Counter()
    engine("run.steps=4", "run.checkpoint_every=3", write=True, out=out).run([first])
    # The newest checkpoint (step 4) holds the state as it was when it was written.
    again = Counter()
    engine("run.steps=6", write=True, out=out, resume="latest").run([again])
    assert again.restored == {"updates": 4} and again.updates == 6
    older = Counter()
    engine("run.steps=6", write=True, out=tmp_path / "other").run([older])
    assert older.restored is None and older.updates == 6


def metric_lines(path: Path) -> list[dict[str, Any]]:
    """metrics.jsonl without its timings (the only values a resumed run cannot repeat)."""
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "steps_per_s"} for r in lines]


class KillAfter(Callback):
    """Ends the process's run abruptly after ``step`` (as a kill would: no end-of-run hooks)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        if report.step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize(("checkpoint_every", "log_every"), [(3, 2), (2, 3), (4, 4)])
def test_a_resumed_runs_metrics_are_the_uninterrupted_runs(
    distill_world, tmp_path, checkpoint_every, log_every
):
    settings = (f"run.checkpoint_every={checkpoint_every}", f"run.log_every={log_every}", "run.steps=7")
    engine(*settings, write=True, out=tmp_path / "whole").run()
    with pytest.raises(KeyboardInterrupt):
        engine(*settings, write=True, out=tmp_path / "split").run([KillAfter(checkpoint_every + 1)])
    engine(*settings, write=True, out=tmp_path / "split", resume="latest").run()
    whole = metric_lines(tmp_path / "whole" / "metrics.jsonl")
    assert [r["step"] for r in whole] == [*range(log_every, 7, log_every), 7]
    assert metric_lines(tmp_path / "split" / "metrics.jsonl") == whole


class Evaluates(Callback):
    """Scores and samples the student between updates, as a study's curve does."""

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        model = run.inference_model()
        for route in run.routes:
            batch = route.data.sample(16, torch.Generator().manual_seed(0))
            generate(
                model,
                batch.cond,
                tuple(route.data.shape),
                run.sigmas(route.name),
                torch.Generator(),
                run.device,
            )
            route.field(torch.zeros(16, *route.data.shape), torch.ones(16), batch.cond)


def test_passes_count_training_forwards_only(distill_world):
    settings = ("run.grad_accum=2", "method={type: danceopd, k: 2}", "run.steps=3")
    plain = [r.update.passes for r in engine(*settings).steps()]
    e = engine(*settings)
    evaluated = [r.update.passes for r in e.steps([Evaluates()])]
    assert evaluated == plain  # the evaluations between updates count nothing
    for p, update in zip(plain, (r for r in engine(*settings).steps()), strict=True):
        # Per update: 2 micro-batches of 4 samples with K = 2 queries each: 16 rows with gradients, 16 of the
        # teacher; the rollout's rows are the method's own count.
        assert (p.train, p.teacher, p.rollout) == (16, 16, update.update.rollout_samples)
        assert p.total == p.rollout + 16 + 3 * 16
    # No hook outlives an update: the student and its inference copy carry none.
    assert not e.session.student._forward_hooks and not e.session.inference_model()._forward_hooks


def test_a_plugin_that_calls_sys_exit_is_an_error_that_names_where(distill_world, tmp_path):
    e = engine("run.checkpoint_every=2", write=True, out=tmp_path / "run")
    teacher = e.session.ctx.field("teacher")

    def leave(field: Any) -> None:
        if field.calls > 3:
            sys.exit(0)

    teacher.on_call = leave
    with pytest.raises(PluginError) as err:
        e.run()
    assert "sys.exit(0) was called during training (update 3)" in err.value.message
    assert f"{__file__}:" in err.value.message and "(in leave)" in err.value.message
    assert not (tmp_path / "run" / "student").exists()
