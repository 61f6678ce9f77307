"""``fieldkit train``: train a teacher by flow matching on data (a recipe is a graph with method sft)."""

from __future__ import annotations

import click

from fieldkit.commands.distill import run_graph, run_options
from fieldkit.commands.options import graph_options
from fieldkit.errors import GraphError
from fieldkit.graph.loader import Graph


@click.command(short_help="Train a field by flow matching on data (a recipe).")
@graph_options
@run_options
@click.option("--no-progress", is_flag=True, help="No progress bar or lines (the tables still print).")
def train(graph: Graph, resume: str | None, dry_run: bool, out: str | None, no_progress: bool) -> None:
    """Train the student of GRAPH, a training recipe (a graph whose method is sft), on its routes' data.

    The trained model is exported to OUT/student, where a `fieldkit.checkpoint` source reads it.
    """
    if graph.method.registration.name != "sft":
        raise GraphError(
            f"{graph.source.path}: a training recipe needs method: {{type: sft}}, "
            f"got {graph.method.registration.name!r}",
            hint="use `fieldkit distill` for distillation methods",
        )
    run_graph(graph, resume, dry_run, out, not no_progress)
