"""Callbacks: what happens around the engine's loop. The run's outputs are default callbacks.

A callback subclasses :class:`Callback` and overrides the hooks it needs; every hook gets the engine, runs on
every process (write on ``engine.accelerator.is_main_process`` only, and decide the same way on every process
when a hook calls a collective such as ``engine.save()``), and may call ``engine.request_stop(reason)``.

- ``on_run_start(engine)``: before the first update of :meth:`Engine.steps`.
- ``on_update_end(engine, report)``: after every optimizer update, applied or skipped (``report.applied``).
- ``on_checkpoint(engine, path)``: after :meth:`Engine.save` wrote (or found) the checkpoint of this step.
- ``on_evaluation(engine, scores)``: after :meth:`Engine.evaluate` scored the fields.
- ``on_run_end(engine)``: when the loop reached ``run.steps`` or a stop was requested (not on errors, and not
  when the caller breaks out of the iterator).
- ``teardown(engine)``: always, last, also after an error (close files, stop progress bars).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from fieldkit.atomic import atomic_write
from fieldkit.distill.interval import IntervalMeans
from fieldkit.distill.rundir import graph_changes, previous_graph
from fieldkit.distill.runlog import RunLog, strict_json
from fieldkit.eval.report import results_table
from fieldkit.eval.results import Results, Score, route_teachers
from fieldkit.owned import append_line

if TYPE_CHECKING:
    from fieldkit.distill.engine import Engine


@dataclass(frozen=True)
class StepReport:
    """One optimizer update as the loop saw it: ``step`` counts applied updates so far; ``applied`` is False
    for an update skipped for a non-finite loss or gradient (then ``bad_steps`` counted it); ``record`` is its
    log record (loss, per-route losses, grad norm, timings, ...)."""

    step: int
    applied: bool
    bad_steps: int
    record: dict[str, Any]


class Callback:
    """Hooks around the engine's loop; every hook does nothing unless overridden."""

    def on_run_start(self, engine: Engine) -> None:
        """Before the first update."""

    def on_update_end(self, engine: Engine, report: StepReport) -> None:
        """After each optimizer update (applied or skipped)."""

    def on_checkpoint(self, engine: Engine, path: Path) -> None:
        """After a checkpoint of the current step exists at ``path``."""

    def on_evaluation(self, engine: Engine, scores: list[Score]) -> None:
        """After the fields were scored on the routes' metrics."""

    def on_run_end(self, engine: Engine) -> None:
        """When the loop finished normally (``run.steps`` reached or a stop requested)."""

    def teardown(self, engine: Engine) -> None:
        """Always, after everything else, also after an error."""


def _every(step: int, period: int | None) -> bool:
    """Whether ``step`` is a multiple of ``period`` (never for a period of None or 0)."""
    return period is not None and period > 0 and step % period == 0


def run_results(engine: Engine, scores: list[Score]) -> Results:
    """The run's scores with the teacher of each route and the graph's bar (``run.pass_ratio``)."""
    return Results(scores, route_teachers(engine.graph.spec.routes), engine.run_spec.pass_ratio)


def graph_as_run(engine: Engine) -> dict[str, Any]:
    """The graph as this run runs it (what graph.json and the trackers' hyperparameters record): ``--set``
    overrides applied, and ``run.out`` the folder it writes (``--out`` when given, not the graph's)."""
    spec = engine.graph.spec.model_dump(mode="json")
    if engine.out is not None:
        spec["run"]["out"] = str(engine.out)
    return spec


def log_now(engine: Engine, report: StepReport) -> bool:
    """Whether ``report``'s update ends a logging interval (every ``run.log_every`` steps, and the last)."""
    run = engine.run_spec
    return _every(report.step, run.log_every) or report.step == run.steps


class RunLogger(Callback):
    """``graph.json`` (the graph as it runs now, ``--set`` overrides applied), ``sessions.jsonl`` (one line
    per start or resume: its step and the overrides it applied), ``metrics.jsonl`` (the means of every
    ``run.log_every`` updates, and every skipped update), the progress bar, and the summary and results
    tables on the console."""

    def __init__(self) -> None:
        self.log: RunLog | None = None
        self.interval = IntervalMeans()

    def on_run_start(self, engine: Engine) -> None:
        run, main = engine.run_spec, engine.accelerator.is_main_process
        changes: list[str] = []
        if engine.out is not None and main:
            engine.out.mkdir(parents=True, exist_ok=True)
            spec = graph_as_run(engine)
            previous = previous_graph(engine.out) if engine.step > 0 else None
            changes = graph_changes(previous, spec) if previous is not None else []
            atomic_write(engine.out / "graph.json", json.dumps(spec, indent=1))
            session = {
                "step": engine.step,
                "steps": run.steps,
                "graph": None if engine.graph.path is None else str(engine.graph.path),
                "overrides": list(engine.graph.source.overrides.values()),
                "changed": changes,  # since the session before: the settings this one applies
                "spec": spec,  # each session's whole graph: graph.json holds the newest one only
            }
            append_line(engine.out / "sessions.jsonl", json.dumps(session) + "\n", "sessions log")
        self.log = RunLog(
            engine.out,
            run.steps,
            engine.step,
            enabled=main,
            show_progress=engine.show_progress,
        )
        for change in changes:
            self.log.note(f"[yellow]note:[/] changed since the last session: {escape(change)}")
        if engine.step >= run.steps:
            self.log.note(
                f"[yellow]note:[/] nothing left to train: the run is at step {engine.step} and run.steps is "
                f"{run.steps}; only the end of the run (grids, export, evaluation, report) runs again. "
                "Train further with --set run.steps=MORE."
            )

    def on_update_end(self, engine: Engine, report: StepReport) -> None:
        assert self.log is not None
        self.log.log(report.record)
        if not report.applied:
            self.log.write(report.record)
            return
        self.interval.add(report.record)
        if log_now(engine, report) and (means := self.interval.flush()) is not None:
            self.log.write(means)

    def on_run_end(self, engine: Engine) -> None:
        assert self.log is not None
        self.log.close()
        if engine.accelerator.is_main_process and engine.show_progress:
            title = f"{engine.graph.name}: {engine.step} steps, {engine.bad_steps} skipped"
            self.log.console.print(self.log.summary_table(title))

    def on_evaluation(self, engine: Engine, scores: list[Score]) -> None:
        if self.log is not None and scores and engine.accelerator.is_main_process and engine.show_progress:
            self.log.console.print(
                results_table(
                    run_results(engine, scores), "fields on their routes (same conditions and noise)"
                )
            )

    def teardown(self, engine: Engine) -> None:
        if self.log is not None:
            self.log.close()


class SampleGrids(Callback):
    """A grid per route every ``run.sample_every`` steps and at the end of the run."""

    def on_update_end(self, engine: Engine, report: StepReport) -> None:
        if report.applied and _every(report.step, engine.run_spec.sample_every):
            engine.sample_grids()

    def on_run_end(self, engine: Engine) -> None:
        engine.sample_grids()


class Checkpoints(Callback):
    """A checkpoint every ``run.checkpoint_every`` steps and at the end of the run."""

    def on_update_end(self, engine: Engine, report: StepReport) -> None:
        if report.applied and _every(report.step, engine.run_spec.checkpoint_every):
            engine.save()

    def on_run_end(self, engine: Engine) -> None:
        engine.save()


class Export(Callback):
    """The student (EMA weights, LoRA merged) as a model folder at the end of the run."""

    def on_run_end(self, engine: Engine) -> None:
        engine.export()


class Evaluation(Callback):
    """The route fields and the student scored on the routes' metrics at the end of the run (main process;
    under FSDP every process, as sharded forwards are collectives)."""

    def on_run_end(self, engine: Engine) -> None:
        if engine.accelerator.is_main_process or engine.sharded:
            engine.evaluate()


class ResultsFile(Callback):
    """``results.json``: the results table (:meth:`fieldkit.eval.results.Results.to_json`): the bar, the
    route teachers, the student's verdicts and one row per field and route with its metric values."""

    def on_evaluation(self, engine: Engine, scores: list[Score]) -> None:
        if scores and engine.out is not None and engine.accelerator.is_main_process:
            results = run_results(engine, scores).to_json()
            atomic_write(engine.out / "results.json", strict_json(results, indent=1))  # NaN: null


class HtmlReport(Callback):
    """``report.html`` at the end of the run (after results.json): see :mod:`fieldkit.eval.run_report`."""

    def on_run_end(self, engine: Engine) -> None:
        if engine.out is not None and engine.accelerator.is_main_process:
            from fieldkit.eval.run_report import write_report

            write_report([engine.out], engine.out / "report.html")


def default_callbacks() -> list[Callback]:
    """What :meth:`Engine.run` does around the loop, in order: log, grids, checkpoints, export, evaluation,
    results.json, report.html and the trackers of ``run.report_to``."""
    from fieldkit.distill.trackers import Trackers  # it builds on this module's Callback

    return [
        RunLogger(),
        SampleGrids(),
        Checkpoints(),
        Export(),
        Evaluation(),
        ResultsFile(),
        HtmlReport(),
        Trackers(),
    ]
