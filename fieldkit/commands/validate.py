"""``fieldkit validate``: check a graph (keys, types, references, cycles, what training needs); --build also
builds it as ``distill`` does (everything but the update) and runs each route's data, fields and metrics
once."""

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
    help="Also build everything `distill --dry-run` builds but the update (router, method, student, "
    "optimizer, metrics; weights are read) and run each route's data, field, student and metrics once on "
    "two samples.",
)
def validate(graph: Graph, build: bool) -> None:
    """Check GRAPH: its keys, every type and its parameters, references between fields, cycles, and what
    training needs (a student, routes, and the files that sources read).

    Nothing is built and no weights are read. Prints a short summary and exits with 0 when the graph is
    valid; otherwise prints what is wrong, with the file and line, and exits with 2. With --build, the
    graph is also built as `fieldkit distill` builds it (weights read, data buckets made; a missing feature
    cache is built in a temporary folder, not beside the data), and every route's data, field, the student
    and the route's metrics run once on two samples; it says what it built. `fieldkit distill GRAPH
    --dry-run` also times one update.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from fieldkit.graph.readiness import check_trainable

    check_trainable(graph)
    built = None
    if build:
        from fieldkit.backbones.prompts import caches_in_scratch
        from fieldkit.distill.memory import check_training_fits

        with caches_in_scratch():  # a backbone's missing feature caches: built, used and removed
            check_training_fits(graph)  # before anything is allocated
            built = _build(graph)

    console = Console(highlight=False)
    console.print(f"[green]valid:[/green] {graph.source.path}")
    for warning in get_host().warnings():
        console.print(f"[yellow]warning:[/yellow] plugin {escape(str(warning))}")
    for problem in get_host().problems():  # a clash lost a plugin, a command or a type: the graph may differ
        console.print(f"[yellow]plugin problem:[/yellow] {escape(problem)} (see `fieldkit plugins`)")

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
    if built is not None:
        console.print(built)


def _build(graph: Graph) -> str:
    """Build ``graph`` as ``distill`` does, without a run folder and without an update; what was built."""
    from fieldkit.distill.session import Session

    session = Session(graph, write=False, show_progress=False)
    trainable = sum(p.numel() for p in session.params)
    routes = "; ".join(
        f"{r.name}: data {list(r.data.shape)}, field {session.field_name(r.name) or '-'}, "
        f"{len(r.metrics)} metric(s)"
        for r in session.routes
    )
    return (
        f"[green]built[/green] on {session.accelerator.device}: router {type(session.router).__name__}, "
        f"method {type(session.method).__name__}, student {type(session.student).__name__} "
        f"({trainable:,} trainable parameters), optimizer {type(session.optimizer.optimizer).__name__}; "
        f"routes {routes}. Each route's data, field, the student and its metrics ran once on 2 samples."
    )


def _describe(typed: Typed) -> str:
    """``name (key=value, ...)`` for a typed entry."""
    params = ", ".join(f"{k}={v}" for k, v in typed.params.model_dump().items())
    return f"{typed.registration.name} ({params})" if params else typed.registration.name
