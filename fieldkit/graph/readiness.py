"""What a valid graph still needs before it can train: a student, and the files its sources read.

:func:`load_graph` checks a graph's shape (keys, types, parameters, references); ``fieldkit validate`` also
runs :func:`training_problems`, so a graph that would fail as soon as ``distill`` starts fails there first,
with the file and line. Nothing is built and no weight is read.
"""

from __future__ import annotations

from pathlib import Path

from fieldkit.errors import GraphError
from fieldkit.graph.loader import Graph

PATH_KEYS = ("path",)
"""Parameters of a field that name an input file or folder (resolved against the graph's folder)."""


def training_problems(graph: Graph) -> list[str]:
    """``file:line: key: problem`` for a missing student or routes, and for input paths that do not exist."""
    source = graph.source
    problems = []
    if graph.spec.student is None:
        problems.append(
            f"{source.where(())}: the graph has no 'student' section (add student: {{init: FIELD}})"
        )
    if not graph.spec.routes:
        problems.append(f"{source.where(())}: the graph has no routes to train on (add a 'routes' section)")
    for name, typed in graph.nodes.items():
        for key in PATH_KEYS:
            value = getattr(typed.params, key, None)
            if not isinstance(value, str):
                continue
            path = Path(value).expanduser()
            resolved = path if path.is_absolute() else graph.root / path
            if not resolved.exists():
                loc = ("fields", name, key)
                problems.append(
                    f"{source.where(loc)}: fields.{name}.{key}: no such file or folder: {resolved}"
                )
    return problems


def check_trainable(graph: Graph) -> None:
    """Raise one GraphError listing every :func:`training_problems` (nothing when there are none)."""
    _raise(training_problems(graph), "relative paths in a graph resolve against its folder")


def _raise(problems: list[str], hint: str) -> None:
    if problems:
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
        raise GraphError(head, hint=f"{hint}; fix the graph and validate again")


def shape_problems(graph: Graph) -> list[str]:
    """Build the graph on the meta device (weights are read, then dropped; no compute) and pass one batch of
    each route through its field and the student: ``file:line: routes.NAME: ...`` for every mismatch."""
    import torch

    from fieldkit.distill.student import make_student
    from fieldkit.graph.builder import BuildContext

    meta = torch.device("meta")
    ctx = BuildContext(graph, device=meta)
    assert graph.spec.student is not None  # check_trainable ran first
    student = make_student(ctx.field(str(graph.spec.student.init)), graph.spec.student).to(meta)
    problems = []
    for route in ctx.routes():
        where = f"{graph.source.where(('routes', route.name))}: routes.{route.name}"
        batch = route.data.sample(2, torch.Generator().manual_seed(0)).to(meta)
        x = torch.zeros((2, *route.data.shape), device=meta)
        sigma = torch.full((2,), 0.5, device=meta)
        fields = {f"field {graph.spec.routes[route.name].field}": route.field, "the student": student}
        for what, field in fields.items():
            if field is None:
                continue
            try:
                with torch.no_grad():
                    v = field(x, sigma, batch.cond)
            except Exception as exc:  # any failure here is the graph's: report it with its place
                problems.append(f"{where}: {what} fails on this route's data {list(x.shape)}: {exc}")
                continue
            if tuple(v.shape) != tuple(x.shape):
                problems.append(f"{where}: {what} returns {list(v.shape)} for states {list(x.shape)}")
    return problems


def check_shapes(graph: Graph) -> None:
    """Raise one GraphError listing every :func:`shape_problems` (nothing when there are none)."""
    _raise(shape_problems(graph), "make the route's data shape and the models' shapes agree")
