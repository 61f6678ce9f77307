"""Checks across a graph's sections, run by ``fieldkit validate``: what no single key's schema can see.

- ``run.attention`` names a known attention backend;
- every route's data draws class labels that the student, and every field on the route, can take
  (a field that takes N labels indexes an embedding of N rows: label N would fail mid-run).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fieldkit.errors import FieldkitError
from fieldkit.graph.refs import find_refs
from fieldkit.graph.yaml_source import Loc

if TYPE_CHECKING:
    from fieldkit.graph.loader import Typed
    from fieldkit.graph.schema import GraphSpec

Problem = tuple[Loc, str]


def check_graph(
    spec: GraphSpec, nodes: dict[str, Typed], datasets: dict[str, Typed], root: Path
) -> list[Problem]:
    """Every cross-section problem of a graph whose keys, types and references are valid."""
    return [*_attention(spec), *_labels(spec, nodes, datasets, root)]


def _attention(spec: GraphSpec) -> Iterator[Problem]:
    name = spec.run.attention
    if name is None:
        return
    from fieldkit.attention import known_backends

    known = known_backends()
    if name not in known:
        yield ("run", "attention"), f"unknown attention backend {name!r}; known: {', '.join(known)}"


def _label_capacity(typed: Typed, root: Path) -> int | None:
    """How many class labels a node takes (None: it reads no labels, or it cannot be told here)."""
    params, kind = typed.params, typed.registration.name
    if kind == "gaussian_mixture":
        return int(params.classes)  # type: ignore[attr-defined]
    config: Any = getattr(params, "config", None)
    if kind == "fieldkit.checkpoint":
        from fieldkit.models.pretrained import CONFIG_NAME, read_config_json

        path = Path(params.path).expanduser()  # type: ignore[attr-defined]
        file = (path if path.is_absolute() else root / path) / CONFIG_NAME
        try:
            config = read_config_json(file) if file.exists() else None
        except FieldkitError:
            config = None  # building the node reports it
    classes = config.get("num_classes") if isinstance(config, dict) else getattr(config, "num_classes", None)
    return classes if isinstance(classes, int) and classes > 0 else None


def _closure(name: str, nodes: dict[str, Typed]) -> list[str]:
    seen: list[str] = []
    stack = [name]
    while stack:
        node = stack.pop()
        if node in seen or node not in nodes:
            continue
        seen.append(node)
        stack.extend(str(ref) for _, ref in find_refs(nodes[node].params))
    return seen


def _labels(
    spec: GraphSpec, nodes: dict[str, Typed], datasets: dict[str, Typed], root: Path
) -> Iterator[Problem]:
    for route, rspec in spec.routes.items():
        data = datasets.get(route)
        drawn = _label_capacity(data, root) if data is not None else None
        if drawn is None:
            continue
        users = _closure(str(rspec.field), nodes) if rspec.field is not None else []
        if spec.student is not None:
            users.append(str(spec.student.init))
        short = [
            (takes, node)
            for node in dict.fromkeys(users)
            if node in nodes and (takes := _label_capacity(nodes[node], root)) is not None and takes < drawn
        ]
        if short:
            takes, node = min(short)
            yield (
                ("routes", route, "data"),
                f"draws labels 0..{drawn - 1}, but field {node!r} takes only {takes} classes "
                f"(labels 0..{takes - 1}); make the data's classes at most {takes} or the field's more",
            )
