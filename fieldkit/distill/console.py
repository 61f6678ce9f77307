"""What a run shows on the console, as callbacks: a start banner, live progress, the tables at the end, and a
clean stop on Ctrl-C.

- :class:`ConsoleOutput`: the banner (device, precision, processes, parameters, global batch, steps, output
  folder); in a terminal a progress bar and a status line while the run finishes (grids, checkpoint, export,
  evaluation); outside a terminal (a log file, CI) one plain line per ``run.log_every`` updates with the
  step, the loss of each route, the lr, updates per second and the time left, never cut short; then the
  summary and results tables on stdout. ``progress=False`` (``--no-progress``) keeps the banner and the
  tables and drops the bar and the lines; a run with ``show_progress`` off (``--quiet``) prints nothing.
- :class:`StopOnInterrupt`: the first Ctrl-C finishes the update under way, writes its checkpoint and raises
  :class:`RunInterrupted`, whose message is the command that resumes; a second Ctrl-C stops at once.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.status import Status
from rich.table import Table

from fieldkit.distill.callbacks import Callback, RunView, StepReport
from fieldkit.eval.results import Score


def clock(seconds: float) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour)."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def banner(run: RunView) -> str:
    """One line that says what this run is: device, precision, processes, parameters, global batch, steps
    and output folder."""
    spec = run.run_spec
    trainable, total = run.parameters
    params = f"{total:,} parameters" + ("" if trainable == total else f" ({trainable:,} trained)")
    batch = spec.batch_size * spec.grad_accum * run.processes
    parts = [f"{spec.batch_size} per micro-batch"]
    if spec.grad_accum > 1:
        parts.append(f"x {spec.grad_accum} accumulated")
    if run.processes > 1:
        parts.append(f"x {run.processes} processes")
    steps = f"steps {run.step} -> {spec.steps}" if run.step else f"{spec.steps} steps"
    where = f"writing to {run.out}" if run.out is not None else "writing nothing"
    processes = f"{run.processes} process" + ("es" if run.processes > 1 else "")
    return (
        f"distill {run.graph.name}: {run.device}, {spec.precision}, {processes}, {params}, global batch "
        f"{batch} ({' '.join(parts)}), {steps}, {where}"
    )


def _route_names(run: RunView) -> list[str]:
    return [route.name for route in run.routes]


def _position(order: Sequence[str], name: str) -> tuple[int, str]:
    return (order.index(name) if name in order else len(order), name)


def in_graph_order(order: Sequence[str], values: Mapping[str, float]) -> list[tuple[str, float]]:
    """``values`` per route as (route, value) pairs in ``order``, the graph's route order (names not in it
    last, by name), so that every line of a run lists its routes in one order."""
    return sorted(values.items(), key=lambda item: _position(order, item[0]))


class ConsoleOutput(Callback):
    """The run on the console (see the module docstring). ``terminal`` decides between the bar and plain
    lines (default: whether stdout is a terminal)."""

    def __init__(self, progress: bool = True, terminal: bool | None = None) -> None:
        self.progress = progress
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.out = Console(highlight=False, soft_wrap=True)  # tables and lines: stdout, never cut
        self.err = Console(stderr=True, highlight=False)
        self._bar: Progress | None = None
        self._status: Status | None = None
        self._since: tuple[float, int] = (0.0, 0)
        self.route_steps: dict[str, int] = defaultdict(int)
        self.route_loss: dict[str, list[float]] = defaultdict(list)

    def _on(self, run: RunView) -> bool:
        return run.is_main and run.show_progress

    def on_run_start(self, run: RunView) -> None:
        if not self._on(run):
            return
        self.out.print(banner(run), markup=False)
        self._since = (time.perf_counter(), run.step)
        if self.progress and self.terminal:
            self._bar = Progress(
                TextColumn("[bold]distill"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[losses]}"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.err,
            )
            self._task = self._bar.add_task("", total=run.run_spec.steps, completed=run.step, losses="")
            self._bar.start()

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        if report.applied:
            for route, value in report.update.route_losses.items():
                self.route_steps[route] += 1
                self.route_loss[route].append(value)
        if not self._on(run) or not self.progress:
            return
        if self._bar is not None:
            losses = "  ".join(
                f"{r} {v:.4g}" for r, v in in_graph_order(_route_names(run), report.update.route_losses)
            )
            self._bar.update(self._task, completed=report.step, losses=losses)
        elif report.means is not None:
            self.out.print(self.line(run, report.means), markup=False)

    def line(self, run: RunView, means: dict[str, Any]) -> str:
        """``step 20/1400  loss 0.0412 (t2i 0.031, local 0.052)  lr 0.0003  3.21 steps/s  ETA 7:15``."""
        start, first = self._since
        now, step = time.perf_counter(), int(means["step"])
        rate = (step - first) / (now - start) if now > start and step > first else 0.0
        self._since = (now, step)
        routes = in_graph_order(
            _route_names(run), {k.split("/", 1)[1]: v for k, v in means.items() if k.startswith("loss/")}
        )
        per_route = f" ({', '.join(f'{r} {v:.4g}' for r, v in routes)})" if len(routes) > 1 else ""
        left = clock((run.run_spec.steps - step) / rate) if rate > 0 else "-"
        return (
            f"step {step}/{run.run_spec.steps}  loss {means.get('loss', float('nan')):.4g}{per_route}  "
            f"lr {means.get('lr', float('nan')):.3g}  {rate:.2f} steps/s  ETA {left}"
        )

    def on_run_end(self, run: RunView) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if not self._on(run):
            return
        title = f"{run.graph.name}: {run.step} steps, {run.bad_steps} skipped (non-finite loss or gradient)"
        self.out.print(self.summary_table(title, _route_names(run)))
        message = "finishing: sample grids, checkpoint, the exported student, then every field on its routes"
        if self.terminal:
            self._status = self.err.status(message)
            self._status.start()
        elif self.progress:
            self.out.print(message, markup=False)

    def summary_table(self, title: str, order: Sequence[str] = (), tail: int = 20) -> Table:
        """Per route, in ``order`` (the graph's): optimizer steps routed to it and its mean loss over its last
        ``tail`` steps."""
        table = Table(title=title)
        table.add_column("route")
        table.add_column("steps", justify="right")
        table.add_column(f"loss (last {tail})", justify="right")
        for route in sorted(self.route_steps, key=lambda name: _position(order, name)):
            losses = self.route_loss.get(route, [])[-tail:]
            mean = f"{sum(losses) / len(losses):.5f}" if losses else "-"
            table.add_row(route, str(self.route_steps[route]), mean)
        return table

    def on_evaluation(self, run: RunView, scores: Sequence[Score]) -> None:
        from fieldkit.distill.outputs import run_results
        from fieldkit.eval.report import results_table

        self._stop_status()
        if scores and self._on(run):
            title = "fields on their routes (same conditions and noise)"
            self.out.print(results_table(run_results(run, scores), title))

    def teardown(self, run: RunView) -> None:
        self._stop_status()
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run after an update whose checkpoint was written; the message says how to resume."""


class StopOnInterrupt(Callback):
    """The first Ctrl-C (SIGINT) lets the update under way finish, writes its checkpoint and raises
    :class:`RunInterrupted` with the command that resumes; a second one stops at once. One process only
    (several would have to agree on the step first): with more, Ctrl-C stops the run as it always did. A
    process started with SIGINT ignored (``nohup CMD &`` from a script) keeps ignoring it."""

    def __init__(self) -> None:
        self.pressed = False
        self._previous: Any = None

    def on_run_start(self, run: RunView) -> None:
        main = threading.current_thread() is threading.main_thread()
        if run.processes == 1 and main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._interrupt)

    def _interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.pressed:
            raise KeyboardInterrupt
        self.pressed = True
        Console(stderr=True).print("\n[yellow]Ctrl-C:[/] stopping after this update (Ctrl-C again: at once)")

    def on_update_end(self, run: RunView, report: StepReport) -> None:
        if not self.pressed:
            return
        path = run.save_checkpoint()
        if path is None:
            raise RunInterrupted(f"interrupted at step {run.step}; this run writes no checkpoints")
        run.publish_checkpoint(path)
        raise RunInterrupted(f"interrupted at step {run.step}; checkpoint {path}\n{resume_command(run)}")

    def teardown(self, run: RunView) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


def resume_command(run: RunView) -> str:
    """``resume with: fieldkit distill GRAPH --out OUT --resume latest [--set ...]``."""
    import shlex

    graph = run.graph.path if run.graph.path is not None else Path("GRAPH")
    sets = "".join(f" --set {shlex.quote(text)}" for text in run.graph.source.overrides.values())
    out = f" --out {shlex.quote(str(run.out))}" if run.out is not None else ""
    return f"resume with: fieldkit distill {shlex.quote(str(graph))}{out} --resume latest{sets}"
