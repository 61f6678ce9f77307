"""Load a field graph: YAML -> schema -> per-type parameters -> references and cycles.

Nothing is built and no weight is read here: :func:`load_graph` is what ``fieldkit validate`` runs. Every
problem is reported as ``file:line: path.to.key: what is wrong`` with the valid choices.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from fieldkit.capabilities import needs_route_fields
from fieldkit.errors import GraphError
from fieldkit.graph.checks import check_graph
from fieldkit.graph.overrides import apply_overrides, parse_override
from fieldkit.graph.refs import find_refs
from fieldkit.graph.schema import FlowSpec, GraphSpec, RunSpec, StudentSpec, TypedSpec
from fieldkit.graph.yaml_source import Loc, YamlSource, parse_yaml, read_yaml
from fieldkit.plugins.registry import Registration, Registry, unknown_type_message

FIELD_KINDS = ("source", "operator")


@dataclass(frozen=True)
class Typed:
    """A registered type with its validated parameters."""

    registration: Registration
    params: BaseModel


@dataclass(frozen=True)
class Graph:
    """A validated graph: the schema object plus every node, route, router and method resolved to its type."""

    spec: GraphSpec
    source: YamlSource
    nodes: dict[str, Typed]
    datasets: dict[str, Typed]
    metrics: dict[str, list[Typed]]
    router: Typed
    method: Typed

    @property
    def path(self) -> Path | None:
        return None if self.source.path.startswith("<") else Path(self.source.path)

    @property
    def name(self) -> str:
        return self.path.stem if self.path is not None else "graph"

    @property
    def root(self) -> Path:
        """The folder that relative paths in the graph are resolved against."""
        return self.path.parent if self.path is not None else Path.cwd()

    def deps(self, node: str) -> list[str]:
        """The nodes that ``node`` references, in parameter order."""
        return [str(ref) for _, ref in find_refs(self.nodes[node].params)]


class _Problems:
    """Collects ``(loc, message)`` pairs and raises them as one GraphError."""

    def __init__(self, source: YamlSource) -> None:
        self.source = source
        self.items: list[tuple[Loc, str]] = []

    def add(self, loc: Loc, message: str) -> None:
        self.items.append((tuple(loc), message))

    def add_validation(self, loc: Loc, error: ValidationError, model: type[BaseModel]) -> None:
        for err in error.errors():
            sub = tuple(err["loc"])
            self.add((*loc, *sub), _describe(err, model, sub))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = []
        for loc, message in self.items:
            dotted = ".".join(str(part) for part in loc)
            lines.append(f"{self.source.where(loc)}: {dotted + ': ' if dotted else ''}{message}")
        count = len(lines)
        head = (
            lines[0]
            if count == 1
            else f"{self.source.path}: {count} problems in the graph\n  " + "\n  ".join(lines)
        )
        raise GraphError(head, hint="fix the graph and run `fieldkit validate` again")


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the last key of ``loc`` (for listing its valid keys)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        info = current.model_fields.get(part)
        annotation = getattr(info, "annotation", None)
        args = [
            a for a in getattr(annotation, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        current = annotation if isinstance(annotation, type) else (args[-1] if args else None)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


# The names other trainers give fieldkit's keys (diffusers' and accelerate's script flags, and others).
KEY_ALIASES: dict[str, str] = {
    "learning_rate": "lr",
    "lr_scheduler": "lr_schedule",
    "scheduler": "lr_schedule",
    "lr_warmup_steps": "warmup_steps",
    "warmup": "warmup_steps",
    "max_train_steps": "steps",
    "num_steps": "steps",
    "train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum",
    "max_grad_norm": "grad_clip",
    "mixed_precision": "precision",
    "output_dir": "out",
    "checkpointing_steps": "checkpoint_every",
    "validation_steps": "sample_every",
    "optim": "optimizer",
    "adam_weight_decay": "weight_decay",
}


def did_you_mean(key: str, valid: Sequence[str]) -> str | None:
    """The valid key ``key`` was probably meant to be: a known alias, else the closest spelling."""
    alias = KEY_ALIASES.get(key.lower())
    if alias in valid:
        return alias
    close = difflib.get_close_matches(key, valid, n=1)
    return close[0] if close else None


def _section_key(key: str) -> str | None:
    """``run.lr`` for a top-level ``lr`` (``run.steps`` for ``steps``, ``flow.shift`` for ``shift``, aliases
    such as ``learning_rate`` too): the section key a misplaced top-level key probably meant."""
    name = KEY_ALIASES.get(key.lower(), key)
    for section, model in (("run", RunSpec), ("flow", FlowSpec), ("student", StudentSpec)):
        if name in model.model_fields:
            return f"{section}.{name}"
    return None


def _describe(err: ErrorDetails, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _model_at(model, loc)
        keys = list(owner.model_fields) if owner is not None else []
        guess = did_you_mean(str(loc[-1]), keys)
        if guess is None and owner is GraphSpec:
            guess = _section_key(str(loc[-1]))
        valid = f"; valid keys: {', '.join(keys)}" if keys else ""
        return f"unknown key {loc[-1]!r}" + (f"; did you mean {guess!r}?" if guess else "") + valid
    if kind == "missing":
        if loc and isinstance(loc[-1], int):  # a fixed-length list (betas, a size) given too few items
            return f"too few values: item {loc[-1]} (counting from 0) is missing"
        return f"missing required key {loc[-1]!r}" if loc else "missing required value"
    if kind == "model_type":  # a section or a typed node that is not a mapping
        given = err.get("input")
        if "TypedSpec" in err["msg"] and isinstance(given, str):
            return f"expected a mapping with a type, got {given!r}; write {{type: {given}}}"
        return f"expected a mapping of keys, got {given!r}" + (
            "; an empty section needs {} or its keys" if given is None else ""
        )
    message = err["msg"].removeprefix("Value error, ")  # a validator's own sentence needs no prefix
    if "input" in err and not isinstance(err["input"], dict | list):
        message += f" (got {err['input']!r})"
    return message


def _lookup(registry: Registry, kinds: Sequence[str], name: str) -> tuple[Registration | None, str]:
    for kind in kinds:
        if name in registry.entries[kind]:
            return registry.entries[kind][name], ""
    known = sorted(n for kind in kinds for n in registry.names(kind))
    return None, unknown_type_message(" or ".join(kinds), name, known)


def _typed(
    spec: TypedSpec, kinds: Sequence[str], loc: Loc, registry: Registry, problems: _Problems
) -> Typed | None:
    registration, message = _lookup(registry, kinds, spec.type)
    if registration is None:
        problems.add((*loc, "type"), message)
        return None
    try:
        params = registration.params.model_validate(spec.params)
    except ValidationError as exc:
        problems.add_validation(loc, exc, registration.params)
        return None
    # A plugin's params may be a plain BaseModel, which takes .inf and .nan: refused here for every type.
    bad = _non_finite(params.model_dump(), ())
    for sub in bad:
        problems.add((*loc, *sub), "must be a finite number (not .inf or .nan)")
    return None if bad else Typed(registration, params)


def _non_finite(value: Any, loc: Loc) -> list[Loc]:
    """Where in ``value`` (nested dicts, lists, tuples) a float is infinite or NaN."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [loc]
    if isinstance(value, dict):
        return [bad for key, item in value.items() for bad in _non_finite(item, (*loc, key))]
    if isinstance(value, list | tuple):
        return [bad for i, item in enumerate(value) for bad in _non_finite(item, (*loc, i))]
    return []


def _check_refs(nodes: dict[str, Typed], spec: GraphSpec, problems: _Problems) -> None:
    names = sorted(spec.fields)
    known = f"known fields: {', '.join(names)}"
    for node, typed in nodes.items():
        for loc, ref in find_refs(typed.params):
            if ref not in spec.fields:
                problems.add(("fields", node, *loc), f"unknown field {str(ref)!r} ({known})")
    for route, rspec in spec.routes.items():
        if rspec.field is not None and rspec.field not in spec.fields:
            problems.add(("routes", route, "field"), f"unknown field {str(rspec.field)!r} ({known})")
    if spec.student is not None and spec.student.init not in spec.fields:
        problems.add(("student", "init"), f"unknown field {str(spec.student.init)!r} ({known})")
    elif (
        spec.student is not None
        and (init := nodes.get(str(spec.student.init))) is not None
        and init.registration.kind == "operator"
    ):
        problems.add(
            ("student", "init"),
            f"{str(spec.student.init)!r} is an operator ({init.registration.name}) built from other "
            "fields, with no weights of its own to train; point student.init at a source with weights "
            "(e.g. a fieldkit.checkpoint or fieldkit.mmdit)",
        )


def _check_cycles(nodes: dict[str, Typed], problems: _Problems) -> None:
    """Depth-first search with colours: a reference back to a node on the current path is a cycle."""
    colour: dict[str, int] = {}  # 1 = on the current path, 2 = finished

    def visit(node: str, path: list[str]) -> bool:
        colour[node] = 1
        for _, ref in find_refs(nodes[node].params):
            dep = str(ref)
            if dep not in nodes:
                continue
            if colour.get(dep) == 1:
                loop = " -> ".join([*path[path.index(dep) :], dep])
                problems.add(("fields", node), f"cycle in the graph: {loop}")
                return True
            if dep not in colour and visit(dep, [*path, dep]):
                return True
        colour[node] = 2
        return False

    for start in nodes:
        if start not in colour and visit(start, [start]):
            return


def validate_source(source: YamlSource, registry: Registry) -> Graph:
    """Validate parsed YAML against the schema and the registry; raises one GraphError with every problem."""
    problems = _Problems(source)
    if not isinstance(source.data, dict):
        problems.add((), "a graph must be a mapping with at least a 'fields' section")
        problems.raise_if_any()
    try:
        spec = GraphSpec.model_validate(source.data)
    except ValidationError as exc:
        problems.add_validation((), exc, GraphSpec)
        problems.raise_if_any()
        raise
    nodes = {}
    for name, node in spec.fields.items():
        typed = _typed(node, FIELD_KINDS, ("fields", name), registry, problems)
        if typed is not None:
            nodes[name] = typed
    datasets, metrics = {}, {}
    for name, route in spec.routes.items():
        data = _typed(route.data, ("dataset",), ("routes", name, "data"), registry, problems)
        if data is not None:
            datasets[name] = data
        metrics[name] = [
            m
            for i, mspec in enumerate(route.metrics)
            if (m := _typed(mspec, ("metric",), ("routes", name, "metrics", i), registry, problems))
            is not None
        ]
    router = _typed(spec.router, ("router",), ("router",), registry, problems)
    method = _typed(spec.method, ("method",), ("method",), registry, problems)
    if method is not None and needs_route_fields(method.params):
        for name, route in spec.routes.items():
            if route.field is None:
                problems.add(("routes", name), f"method {spec.method.type!r} needs a 'field' on every route")
    _check_refs(nodes, spec, problems)
    if not problems.items:
        _check_cycles(nodes, problems)
    if not problems.items:
        root = Path.cwd() if source.path.startswith("<") else Path(source.path).parent
        for loc, message in check_graph(spec, nodes, datasets, root, metrics, method):
            problems.add(loc, message)
    problems.raise_if_any()
    assert router is not None and method is not None
    return Graph(spec, source, nodes, datasets, metrics, router, method)


def load_graph(path: str | Path, overrides: Sequence[str], registry: Registry) -> Graph:
    """Read, override and validate a graph file against ``registry``'s types, without building anything or
    reading any weights (:func:`fieldkit.load_graph` passes the plugin host's)."""
    return validate_parsed(read_yaml(path), overrides, registry)


def loads_graph(text: str, overrides: Sequence[str], registry: Registry) -> Graph:
    """:func:`load_graph` for YAML text (relative paths resolve against the working folder)."""
    return validate_parsed(parse_yaml(text), overrides, registry)


def validate_parsed(source: YamlSource, overrides: Sequence[str], registry: Registry) -> Graph:
    """Apply ``--set`` overrides to parsed YAML and validate it."""
    data = apply_overrides(source.data, overrides)
    # The last override of a key path wins, as it does for the data.
    set_by: dict[Loc, str] = {tuple(parse_override(text)[0]): text for text in overrides}
    return validate_source(YamlSource(data, source.path, source.lines, set_by), registry)
