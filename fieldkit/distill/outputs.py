"""The run's outputs, as the default callbacks of :meth:`Engine.run` (see :mod:`fieldkit.distill.callbacks`).

Each holds its own code and publishes what it made: :class:`SampleGrids` the grids (``on_samples``),
:class:`Checkpoints` the checkpoint (``on_checkpoint``), :class:`Evaluation` the scores (``on_evaluation``);
:class:`RunLogger`, :class:`ResultsFile`, :class:`HtmlReport` and the trackers use them. Any of them can be
replaced or dropped by name: ``engine.run(replace={"samples": MyGrids()})`` (:func:`default_callbacks`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.markup import escape
from torch import nn

from fieldkit.atomic import atomic_path, atomic_write
from fieldkit.backbones.traced import replayed_passes
from fieldkit.data import batch_captions, evaluation_bucket
from fieldkit.distill.callbacks import Callback, RunView, SampleGrid, StepReport, every
from fieldkit.distill.rundir import graph_changes, previous_graph
from fieldkit.distill.runlog import RunLog, strict_json
from fieldkit.eval.grid import labelled_grid, write_grid
from fieldkit.eval.report import evaluate
from fieldkit.eval.results import Results, Score, route_teachers
from fieldkit.flow import generate
from fieldkit.models.pretrained import save_model_folder
from fieldkit.owned import append_line


def graph_as_run(run: RunView) -> dict[str, Any]:
    """The graph as this run runs it (what graph.json and the trackers' hyperparameters record): ``--set``
    overrides applied, and ``run.out`` the folder it writes (``--out`` when given, not the graph's)."""
    spec = run.graph.spec.model_dump(mode="json")
    if run.out is not None:
        spec["run"]["out"] = str(run.out)
    return spec


def run_results(run: RunView, scores: Sequence[Score]) -> Results:
    """The run's scores with the teacher of each route and the graph's bar (``run.pass_ratio``)."""
    return Results(list(scores), route_teachers(run.graph.spec.routes), run.run_spec.pass_ratio)


class RunLogger(Callback):
    """``graph.json`` (the graph as it runs now, ``--set`` overrides applied), ``sessions.jsonl`` (one line
    per start or resume: its step and the overrides it applied), ``metrics.jsonl`` (the means of every
    ``run.log_every`` updates, and every skipped update) and the notes of a resumed run; the console's
    progress and tables are :class:`~fieldkit.distill.console.ConsoleOutput`'s."""

    def __init__(self) -> None:
        self.log: RunLog | None = None

    def on_run_start(self, run: RunView) -> None:
        spec = run.run_spec
        changes: list[str] = []
        if run.out is not None and run.is_main:
            run.out.mkdir(parents=True, exist_ok=True)
            graph = graph_as_run(run)
            previous = previous_graph(run.out) if run.step > 0 else None
            changes = graph_changes(previous, graph) if previous is not None else []
            atomic_write(run.out / "graph.json", json.dumps(graph, indent=1))
            session = {
                "step": run.step,
                "steps": spec.steps,
                "graph": None if run.graph.path is None else str(run.graph.path),
                "overrides": list(run.graph.source.overrides.values()),
                "changed": changes,  # since the session before: the settings this one applies
                "spec": graph,  # each session's whole graph: graph.json holds the newest one only
            }
            append_line(run.out / "sessions.jsonl", json.dumps(session) + "\n", "sessions log")
        self.log = RunLog(run.out, enabled=run.is_main, quiet=not run.show_progress)
        for change in changes:
            self.log.note(f"[yellow]note:[/] changed since the last session: {escape(change)}")
        if run.step >= spec.steps:
            self.log.note(
                f"[yellow]note:[/] nothing left to train: the run is at step {run.step} and run.steps is "
                f"{spec.steps}; only the end of the run (grids, export, evaluation, report) runs again. "
                "Train further with --set run.steps=MORE."
            )

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        assert self.log is not None
        self.log.log(report.record)
        if not report.applied:
            self.log.write(report.record)
        elif report.means is not None:
            self.log.write(report.means)


class SampleGrids(Callback):
    """A grid per route every ``run.sample_every`` steps and at the end of the run: the route's field (or its
    data) in the top row, the student below, from ``n`` conditions (default ``run.grid_samples``; none
    when it is 0) and noise drawn with ``seed``. Under FSDP every process computes them (sharded forwards
    are collectives); the main process writes ``samples/step-STEP-ROUTE.png``. Publishes the grids
    (``on_samples``). The fields are frozen and the conditions and noise the same at every grid, so a
    route's field row is drawn once per run and kept. A grid is sampled ``run.batch_size`` conditions at a
    time, so it never needs more memory than a training micro-batch (a large model trained at batch 1)."""

    def __init__(self, n: int | None = None, seed: int = 1234) -> None:
        self.n, self.seed = n, seed
        self.drawn_at = -1  # the step whose grids were last drawn (the end of a run may repeat it)
        self.field_rows: dict[str, torch.Tensor] = {}  # route -> its field's row, drawn at the first grid

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        if report.applied and every(report.step, run.run_spec.sample_every):
            self.draw(run)

    def on_run_end(self, run: RunView) -> None:
        if self.drawn_at != run.step:
            self.draw(run)

    def draw(self, run: RunView) -> None:
        """Draw, write and publish every route's grid at this step."""
        self.drawn_at = run.step
        n = run.run_spec.grid_samples if self.n is None else self.n
        out = run.out
        if n == 0 or out is None or not (run.is_main or run.sharded):
            return
        policy = run.inference_model()
        chunk = run.run_spec.batch_size  # a grid never needs more memory than a training micro-batch
        with replayed_passes(run.replays):  # the teachers' rows replay what training recorded
            grids = self._route_grids(run, out, policy, n, chunk)
        if grids:
            run.publish_samples(grids)

    def _route_grids(
        self, run: RunView, out: Path, policy: nn.Module, n: int, chunk: int
    ) -> list[SampleGrid]:
        """Each route's grid of ``n`` conditions (written by the main process), drawn ``chunk`` at a time."""
        grids = []
        for route in run.routes:
            bucket = evaluation_bucket(route.data)
            batch = bucket.sample(n, torch.Generator().manual_seed(self.seed))
            shape, sigmas = tuple(route.data.shape), run.sigmas(route.name)
            rows, labels = [], []
            if batch.source is not None:  # an edit route: its source images first
                rows.append(batch.source)
                labels.append("source")
            if route.field is not None:
                labels.append(f"teacher: {run.field_name(route.name)}")
                if route.name not in self.field_rows:
                    noise = torch.Generator().manual_seed(self.seed)
                    self.field_rows[route.name] = generate(
                        route.field, batch.cond, shape, sigmas, noise, run.device, chunk
                    )
                rows.append(self.field_rows[route.name])
            elif batch.target is not None:
                rows.append(batch.target)
                labels.append("data")
            noise = torch.Generator().manual_seed(self.seed)
            rows.append(generate(policy, batch.cond, shape, sigmas, noise, run.device, chunk))
            labels.append("student")
            if run.is_main:
                captions = batch_captions(bucket, batch)
                image = labelled_grid(rows, labels, captions)
                path = out / "samples" / f"step-{run.step:08d}-{route.name}.png"
                write_grid(image, path, labels, captions)
                grids.append(SampleGrid(route.name, run.step, np.asarray(image.convert("RGB")), path))
        return grids


class Checkpoints(Callback):
    """A checkpoint every ``run.checkpoint_every`` steps and at the end of the run; publishes its path."""

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        if report.applied and every(report.step, run.run_spec.checkpoint_every):
            self.save(run)

    def on_run_end(self, run: RunView) -> None:
        self.save(run)

    def save(self, run: RunView) -> None:
        path = run.save_checkpoint()
        if path is not None:
            run.publish_checkpoint(path)


class Export(Callback):
    """The student (EMA weights when on, LoRA merged) at the end of the run, as ``RUN/student`` where the
    ``fieldkit.checkpoint`` source reads it: the model's own ``save_pretrained`` when it has one, else its
    weights as ``model.safetensors``."""

    def on_run_end(self, run: RunView) -> None:
        if run.out is None:
            return
        model = run.inference_model() if run.is_main or run.sharded else None
        if model is not None and run.is_main:
            with atomic_path(run.out / "student", folder=True) as tmp:
                save_model_folder(model, tmp)
        run.barrier()


class Evaluation(Callback):
    """At the end of the run, every route's field and the student scored on the routes' metrics (the same
    conditions and noise; ``samples`` per route, default ``run.eval_samples``); publishes the scores. Runs on
    the main process (under FSDP on every process, as sharded forwards are collectives)."""

    def __init__(self, samples: int | None = None) -> None:
        self.samples = samples

    def on_run_end(self, run: RunView) -> None:
        routes = [r for r in run.routes if r.metrics]
        if not routes or not (run.is_main or run.sharded):
            return
        fields = {str(run.field_name(r.name)): r.field for r in run.routes if r.field is not None}
        fields["student"] = run.inference_model()
        samples = self.samples or run.run_spec.eval_samples
        scores = [
            score
            for route in routes
            for score in evaluate(fields, [route], run.sigmas(route.name), samples, device=run.device)
        ]
        run.publish_scores(scores)


class ResultsFile(Callback):
    """``results.json``: the results table (:meth:`fieldkit.eval.results.Results.to_json`): the bar, the
    route teachers, the student's verdicts and one row per field and route with its metric values."""

    def on_evaluation(self, run: RunView, scores: Sequence[Score]) -> None:
        if scores and run.out is not None and run.is_main:
            results = run_results(run, scores).to_json()
            atomic_write(run.out / "results.json", strict_json(results, indent=1))  # NaN: null


class HtmlReport(Callback):
    """``report.html`` at the end of the run (after results.json): see :mod:`fieldkit.eval.run_report`."""

    def on_run_end(self, run: RunView) -> None:
        if run.out is not None and run.is_main:
            from fieldkit.eval.run_report import write_report

            write_report([run.out], run.out / "report.html")


def default_callbacks(**replace: Callback | None) -> list[Callback]:
    """What :meth:`Engine.run` does around the loop, in order, by name: ``console``, ``log``,
    ``checkpoints``, ``samples``, ``export``, ``evaluation``, ``results``, ``report``, ``trackers``
    (``run.report_to``) and ``interrupt`` (Ctrl-C: a checkpoint, then stop). The checkpoint comes before
    every output that can fail (a grid or an evaluation out of memory, a plugin's metric): the trained
    weights are on disk first. ``replace`` puts a callback of the caller's in one's place, or drops it
    (None)."""
    from fieldkit.distill.console import ConsoleOutput, StopOnInterrupt
    from fieldkit.distill.trackers import Trackers  # it builds on this module's callbacks

    defaults: dict[str, Callback] = {
        "console": ConsoleOutput(),
        "log": RunLogger(),
        "checkpoints": Checkpoints(),
        "samples": SampleGrids(),
        "export": Export(),
        "evaluation": Evaluation(),
        "results": ResultsFile(),
        "report": HtmlReport(),
        "trackers": Trackers(),
        "interrupt": StopOnInterrupt(),
    }
    unknown = sorted(set(replace) - set(defaults))
    if unknown:
        raise ValueError(f"no default callback named {', '.join(unknown)}; the names: {', '.join(defaults)}")
    chosen = {**defaults, **replace}
    return [cb for cb in chosen.values() if cb is not None]
