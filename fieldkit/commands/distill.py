"""``fieldkit distill``: train the graph's student against its routed fields."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fieldkit.commands.options import graph_options
from fieldkit.errors import FieldkitError
from fieldkit.graph.loader import Graph

WARM_UPDATES = 3  # timed after the first (cold) update for the dry run's estimate


def run_graph(
    graph: Graph,
    resume: str | None,
    dry_run: bool,
    out: str | Path | None,
    progress: bool,
    quiet: bool = False,
) -> None:
    """:func:`_run_graph`; a dry run builds a backbone's missing feature caches in a temporary folder (removed
    after it), so that it writes nothing beside the user's data either."""
    if out is not None:
        out = out_folder(str(out), graph)
    if not dry_run:
        _run_graph(graph, resume, dry_run, out, progress, quiet)
        return
    from fieldkit.backbones.prompts import caches_in_scratch

    with caches_in_scratch():
        _run_graph(graph, resume, dry_run, out, progress, quiet)


def out_folder(out: str, graph: Graph) -> str:
    """``--out`` checked as ``run.out`` is, with ``{graph}`` (the graph file's stem) filled in."""
    from fieldkit.graph.schema import check_out

    try:
        check_out(out, "--out")
    except ValueError as exc:
        raise FieldkitError(str(exc)) from None
    return out.format(graph=graph.name)


def _run_graph(
    graph: Graph,
    resume: str | None,
    dry_run: bool,
    out: str | Path | None,
    progress: bool,
    quiet: bool = False,
) -> None:
    """Run the engine on ``graph`` (``dry_run``: build everything and time a few updates; write nothing).
    ``progress``: the bar in a terminal, a line per ``run.log_every`` updates elsewhere; ``quiet``: errors
    only."""
    import sys

    from rich.console import Console
    from rich.markup import escape

    from fieldkit.distill.console import ConsoleOutput
    from fieldkit.distill.engine import Engine
    from fieldkit.distill.memory import check_training_fits
    from fieldkit.owned import write_error

    console = Console(stderr=True, highlight=False)
    check_training_fits(graph)  # before the engine allocates anything
    loading = "loading the graph's fields, data and student"
    status: Any = contextlib.nullcontext()
    if sys.stderr.isatty() and not quiet:
        status = console.status(loading)
    elif not quiet:
        console.print(f"{loading} ...")
    if dry_run:
        from fieldkit.distill.rundir import check_run_folder
        from fieldkit.distill.session import output_path

        # what the run would refuse about its folder and --resume, refused now (nothing written)
        notes = check_run_folder(output_path(graph, out), resume)
        with status:
            engine = Engine(graph, write=False, show_progress=False)
        for note in notes:
            console.print(f"[yellow]note:[/] {escape(note)}")
        dry_run_estimate(engine, graph, console)
        return
    try:
        with status:
            engine = Engine(graph, out, resume=resume, show_progress=not quiet)
        result = engine.run(replace={"console": ConsoleOutput(progress=progress)})
    except OSError as exc:  # disk full, read-only, ...: the user's to fix, and the last checkpoint is intact
        error = write_error(exc)
        if error is None:
            raise
        raise error from exc
    if result.out is not None and not quiet:
        Console(highlight=False, soft_wrap=True).print(
            f"outputs in {result.out} (report.html, metrics.jsonl, samples/, checkpoints/, student/)"
        )


def dry_run_estimate(engine: Any, graph: Graph, console: Any) -> None:
    """Time one cold update and :data:`WARM_UPDATES` warm ones (nothing written); estimate the run from the
    warm ones' median: the first update pays for lazy initialisation, compilation and caches once."""
    loop = engine.steps()
    times, update = [], None
    try:
        for _ in range(1 + min(WARM_UPDATES, graph.spec.run.steps - 1)):
            start = time.perf_counter()
            update = next(loop).update
            times.append(time.perf_counter() - start)
            if not update.finite:
                raise FieldkitError(
                    f"dry run failed: the update's loss ({update.loss}) or gradient norm "
                    f"({update.grad_norm}) is not finite, so a run would skip every step",
                    hint="check the routes' fields for NaN/inf outputs (a teacher's weights?), and run.lr",
                )
    finally:
        loop.close()
    assert update is not None
    warm = sorted(times[1:]) or times
    per_update = warm[len(warm) // 2]
    steps = graph.spec.run.steps
    trainable = sum(p.numel() for p in engine.session.params)
    console.print(
        f"[green]dry run ok:[/] {len(engine.session.routes)} route(s), {trainable:,} trainable parameters; "
        f"first update {times[0]:.3f} s, then {per_update:.3f} s per update (median of {len(warm)}; rollout "
        f"NFE {update.rollout_nfe}, loss {update.loss:.4g}); {steps} steps = about "
        f"{(times[0] + per_update * (steps - 1)) / 60:.1f} min of training (the end-of-run evaluation "
        "comes on top). Nothing written."
    )


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--resume``, ``--dry-run`` and ``--out``, of every command that runs a graph (distill, train)."""
    for option in reversed(RUN_OPTIONS):
        command = option(command)
    return command


RUN_OPTIONS = [
    click.option(
        "--resume",
        metavar="latest|PATH",
        help="Continue the run in the output folder from its newest good checkpoint, or from the checkpoint "
        "folder PATH (RUN/checkpoints/step-N, of this run or another).",
    ),
    click.option(
        "--dry-run",
        is_flag=True,
        help="Build everything and time one update; write nothing (the output folder and --resume are "
        "checked as the run would check them).",
    ),
    click.option(
        "--out",
        type=click.Path(path_type=str),
        help="Output folder (default: run.out of the graph); {graph} is the graph file's stem, as in "
        "run.out.",
    ),
]


@click.command(short_help="Distill the routed fields of a graph into its student.")
@graph_options
@run_options
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bar or progress lines; the start line and the tables still print.",
)
@click.option(
    "--quiet", "-q", is_flag=True, help="Print nothing but errors (metrics.jsonl is still written)."
)
def distill(
    graph: Graph, resume: str | None, dry_run: bool, out: str | None, no_progress: bool, quiet: bool
) -> None:
    """Train the student of GRAPH on its own rollouts against the routed fields (DanceOPD by default).

    Prints a start line (device, precision, processes, parameters, global batch, steps, output folder), then
    progress: a bar in a terminal, else (output to a file or a pipe) a line per run.log_every updates.
    Writes metrics.jsonl, sample grids, checkpoints and the exported student under run.out, then prints (on
    stdout) a table of every route's field and the student on the routes' metrics, with the student's pass
    or FAIL. Ctrl-C writes a checkpoint of the last update and prints the command that resumes.

    \b
    Examples:
      fieldkit distill examples/quickstart/graph.yaml
      fieldkit distill graph.yaml --set run.steps=2000 --set method.k=2
      fieldkit distill graph.yaml --resume latest
    """
    run_graph(graph, resume, dry_run, out, not no_progress, quiet)
