"""``fieldkit eval``: score fields and model folders with the metrics of the graph's routes."""

from __future__ import annotations

from pathlib import Path

import click

from fieldkit.commands.options import field_options, graph_options
from fieldkit.graph.loader import Graph


@click.command("eval", short_help="Score fields and checkpoints with the routes' metrics.")
@graph_options
@click.option(
    "--samples",
    default=64,
    show_default=True,
    type=click.IntRange(1, 100000),
    help="Samples per route that every field is scored on.",
)
@field_options
@click.option("--json", "as_json", is_flag=True, help="Print the scores as JSON instead of a table.")
def evaluate(
    graph: Graph,
    field_names: tuple[str, ...],
    checkpoints: tuple[Path, ...],
    samples: int,
    seed: int,
    as_json: bool,
) -> None:
    """Score GRAPH's route fields (or the chosen ones) and model folders on every route with metrics.

    Every field sees the same conditions and noise. See each metric's docs for its formula.
    """
    from rich.console import Console

    from fieldkit.commands.sources import collect_fields, default_device, sampling_sigmas
    from fieldkit.distill.runlog import strict_json
    from fieldkit.errors import FieldkitError
    from fieldkit.eval.report import evaluate as score
    from fieldkit.eval.report import results_table
    from fieldkit.eval.results import LEGEND, Results, route_teachers
    from fieldkit.graph.builder import BuildContext

    ctx = BuildContext(graph, device=default_device())
    routes = ctx.routes()
    if not any(route.metrics for route in routes):
        raise FieldkitError(f"no route of {graph.source.path} has metrics", hint="add routes.NAME.metrics")
    default = [str(s.field) for s in graph.spec.routes.values() if s.field is not None]
    names = list(dict.fromkeys(field_names or default))
    fields = collect_fields(graph, ctx, names, checkpoints)
    first = next(route for route in routes if route.metrics)
    sigmas = sampling_sigmas(graph, fields, tuple(first.data.shape), first.field)
    scores = score(fields, routes, sigmas, samples, seed, ctx.device)
    results = Results(scores, route_teachers(graph.spec.routes), graph.spec.run.pass_ratio)
    if as_json:
        click.echo(strict_json(results.to_json(), indent=1))  # a NaN score is null, as in results.json
        return
    table = results_table(results, f"{graph.source.path}: {samples} samples per route, seed {seed}")
    if not results.verdicts:  # no student judged against a teacher: the bar's footnote explains nothing shown
        table.caption = LEGEND
    Console().print(table)
