"""``fieldkit validate``: check a graph (keys, types, references, cycles, what training needs); --build also
builds it on the meta device to catch shape mismatches."""

from __future__ import annotations

import click

from fieldkit.commands.options import graph_options
from fieldkit.graph.loader import Graph, Typed
from fieldkit.graph.refs import find_refs
from fieldkit.plugins.manager import get_host


@click.command(short_help="Check a graph (and what training needs) without reading weights.")
@graph_options
@click.option(
    "--build",
    is_flag=True,
    help="Also build the graph on the meta device and pass a batch of every route through its field and "
    "the student (catches shape mismatches; reads the weights, computes nothing).",
)
def validate(graph: Graph, build: bool) -> None:
    """Check GRAPH: its keys, every type and its parameters, references between fields, cycles, and what
    training needs (a student, routes, and the files that sources read).

    Nothing is built and no weights are read. Prints a short summary and exits with 0 when the graph is
    valid; otherwise prints what is wrong, with the file and line, and exits with 2. With --build, the
    graph is also built on the meta device and every route's field and the student see one batch of the
    route's data; `fieldkit distill GRAPH --dry-run` builds it for real and times one update.
    """
    from rich.console import Console
    from rich.table import Table

    from fieldkit.graph.readiness import check_shapes, check_trainable

    check_trainable(graph)
    if build:
        from fieldkit.distill.memory import check_training_fits

        check_shapes(graph)
        check_training_fits(graph)

    console = Console(highlight=False)
    console.print(f"[green]valid:[/green] {graph.source.path}")
    for warning in get_host().warnings():
        console.print(f"[yellow]warning:[/yellow] plugin {warning}")

    fields = Table(title="fields", title_justify="left")
    for column in ("name", "type", "kind", "plugin", "uses"):
        fields.add_column(column)
    for name, typed in graph.nodes.items():
        reg = typed.registration
        uses = ", ".join(dict.fromkeys(str(ref) for _, ref in find_refs(typed.params)))
        fields.add_row(name, reg.name, reg.kind, reg.plugin, uses)
    console.print(fields)

    if graph.spec.routes:
        routes = Table(title="routes", title_justify="left")
        for column in ("name", "field", "data", "weight"):
            routes.add_column(column)
        for name, route in graph.spec.routes.items():
            field = str(route.field) if route.field is not None else "-"
            routes.add_row(name, field, graph.datasets[name].registration.name, f"{route.weight:g}")
        console.print(routes)

    console.print(f"router: {_describe(graph.router)}")
    console.print(f"method: {_describe(graph.method)}")
    student = graph.spec.student
    if student is not None:
        console.print(f"student: init from {student.init!s}, {student.train} training")


def _describe(typed: Typed) -> str:
    """``name (key=value, ...)`` for a typed entry."""
    params = ", ".join(f"{k}={v}" for k, v in typed.params.model_dump().items())
    return f"{typed.registration.name} ({params})" if params else typed.registration.name
