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
MISSING_KEY = "missing"
"""A field's parameter that says how to make its missing input (e.g. the script that trains it)."""


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
                todo = getattr(typed.params, MISSING_KEY, None)
                problems.append(
                    f"{source.where(loc)}: fields.{name}.{key}: no such file or folder: {resolved}"
                    + (f" ({todo})" if isinstance(todo, str) else "")
                )
    return problems


def check_trainable(graph: Graph) -> None:
    """Raise one GraphError listing every :func:`training_problems` (nothing when there are none)."""
    _raise(training_problems(graph), "relative paths in a graph resolve against its folder")


def _raise(problems: list[str], hint: str) -> None:
    if problems:
        head = problems[0] if len(problems) == 1 else f"{len(problems)} problems:\n  " + "\n  ".join(problems)
        raise GraphError(head, hint=f"{hint}; fix the graph and validate again")
