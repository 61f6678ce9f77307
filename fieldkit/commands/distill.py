"""``fieldkit distill``: train the graph's student against its routed fields."""

from __future__ import annotations

import time
from pathlib import Path

import click

from fieldkit.commands.options import graph_options
from fieldkit.errors import FieldkitError
from fieldkit.graph.loader import Graph


def run_graph(
    graph: Graph, resume: str | None, dry_run: bool, out: str | Path | None, progress: bool
) -> None:
    """Run the engine on ``graph`` (``dry_run``: build everything and time one update; write nothing)."""
    from rich.console import Console

    from fieldkit.distill.engine import Engine
    from fieldkit.distill.memory import check_training_fits
    from fieldkit.owned import write_error

    console = Console(stderr=True, highlight=False)
    check_training_fits(graph)  # before the engine allocates anything
    if dry_run:
        engine = Engine(graph, write=False, show_progress=False)
        start = time.perf_counter()
        loop = engine.steps()
        update = next(loop).update
        loop.close()
        seconds = time.perf_counter() - start
        if not update.finite:
            raise FieldkitError(
                f"dry run failed: the update's loss ({update.loss}) or gradient norm "
                f"({update.grad_norm}) is not finite, so a run would skip every step",
                hint="check the routes' fields for NaN/inf outputs (a teacher's weights?), and run.lr",
            )
        trainable = sum(p.numel() for p in engine.session.params)
        console.print(
            f"[green]dry run ok:[/] {len(engine.session.routes)} route(s), {trainable:,} trainable "
            f"parameters, one update {seconds:.3f} s (rollout NFE {update.rollout_nfe}, "
            f"loss {update.loss:.4g}); {graph.spec.run.steps} steps = about "
            f"{seconds * graph.spec.run.steps / 60:.1f} min. Nothing written."
        )
        return
    try:
        result = Engine(graph, out, resume=resume, show_progress=progress).run()
    except OSError as exc:  # disk full, read-only, ...: the user's to fix, and the last checkpoint is intact
        error = write_error(exc)
        if error is None:
            raise
        raise error from exc
    if result.out is not None:
        console.print(
            f"outputs in {result.out} (report.html, metrics.jsonl, samples/, checkpoints/, student/)"
        )


@click.command(short_help="Distill the routed fields of a graph into its student.")
@graph_options
@click.option(
    "--resume", metavar="latest|PATH", help="Continue a run from its newest good checkpoint or PATH."
)
@click.option("--dry-run", is_flag=True, help="Build everything and time one update; write nothing.")
@click.option("--out", type=click.Path(path_type=str), help="Output folder (default: run.out of the graph).")
@click.option(
    "--no-progress", is_flag=True, help="No progress bar or tables (logs still go to metrics.jsonl)."
)
def distill(graph: Graph, resume: str | None, dry_run: bool, out: str | None, no_progress: bool) -> None:
    """Train the student of GRAPH on its own rollouts against the routed fields (DanceOPD by default).

    Writes metrics.jsonl, sample grids, checkpoints and the exported student under run.out, then prints a
    table of every route's field and the student on the routes' metrics.

    \b
    Examples:
      fieldkit distill examples/quickstart/graph.yaml
      fieldkit distill graph.yaml --set run.steps=2000 --set method.k=2
      fieldkit distill graph.yaml --resume latest
    """
    run_graph(graph, resume, dry_run, out, not no_progress)
