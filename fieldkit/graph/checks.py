"""Checks across a graph's sections, run by ``fieldkit validate``: what no single key's schema can see.

- ``run.attention`` names a known attention backend;
- every route's data draws class labels that the student, and every field on the route, can take
  (a field that takes N labels indexes an embedding of N rows: label N would fail mid-run), and that every
  built-in metric can score: a ``gaussian_mixture`` metric of another shape, or of fewer classes, than its
  route's data would fail (or score nonsense) only in the evaluation after the whole training.
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
    spec: GraphSpec,
    nodes: dict[str, Typed],
    datasets: dict[str, Typed],
    root: Path,
    metrics: dict[str, list[Typed]] | None = None,
    method: Typed | None = None,
) -> list[Problem]:
    """Every cross-section problem of a graph whose keys, types and references are valid."""
    return [
        *_attention(spec),
        *_queries(spec, method),
        *_labels(spec, nodes, datasets, root),
        *_metrics(datasets, metrics or {}, root),
    ]


def _attention(spec: GraphSpec) -> Iterator[Problem]:
    name = spec.run.attention
    if name is None:
        return
    from fieldkit.attention import known_backends

    known = known_backends()
    if name not in known:
        yield ("run", "attention"), f"unknown attention backend {name!r}; known: {', '.join(known)}"


def _queries(spec: GraphSpec, method: Typed | None) -> Iterator[Problem]:
    """A method's ``k`` queries per rollout are at most the rollout's steps (``query: all`` ignores k)."""
    params = method.params if method is not None else None
    k = getattr(params, "k", None)
    if not isinstance(k, int) or getattr(params, "query", None) == "all":
        return
    steps = getattr(params, "rollout_steps", None) or spec.flow.steps
    if k > steps:
        raise_ = "method.rollout_steps" if getattr(params, "rollout_steps", None) else "flow.steps"
        message = f"method.k is {k}, more than the rollout's {steps} steps it queries"
        yield ("method", "k"), f"{message}; lower method.k, or raise {raise_}"


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


def _metrics(datasets: dict[str, Typed], metrics: dict[str, list[Typed]], root: Path) -> Iterator[Problem]:
    """A built-in ``gaussian_mixture`` metric scores samples of its own shape and labels below its classes:
    one whose shape is not its route's data's, or that takes fewer classes than the data draws, is refused
    here rather than in the evaluation after the whole training."""
    for route, typed_metrics in metrics.items():
        data = datasets.get(route)
        if data is None:
            continue
        data_shape = getattr(data.params, "shape", None)
        drawn = _label_capacity(data, root)
        for i, metric in enumerate(typed_metrics):
            reg = metric.registration
            if (reg.name, reg.plugin) != ("gaussian_mixture", "fieldkit"):
                continue
            shape = list(metric.params.shape)  # type: ignore[attr-defined]
            if isinstance(data_shape, list) and list(data_shape) != shape:
                yield (
                    ("routes", route, "metrics", i),
                    f"scores samples of shape {shape}, but route {route!r}'s data has shape "
                    f"{list(data_shape)}; give the metric the data's shape",
                )
                continue
            takes = int(metric.params.classes)  # type: ignore[attr-defined]
            if drawn is not None and takes < drawn:
                yield (
                    ("routes", route, "metrics", i),
                    f"takes {takes} classes (labels 0..{takes - 1}), but route {route!r}'s data draws labels "
                    f"0..{drawn - 1}; give the metric the data's classes",
                )
