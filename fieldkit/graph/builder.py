"""Build the objects of a validated graph, lazily: a node is built (and its weights read) only when used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fieldkit.errors import FieldkitError, GraphError
from fieldkit.field import VelocityField
from fieldkit.graph.loader import Graph, Typed
from fieldkit.protocols import Route, Router


@dataclass
class BuildContext:
    """What a factory receives beside its parameters: the graph, the device, and other built nodes."""

    graph: Graph
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _fields: dict[str, VelocityField] = field(default_factory=dict)
    _building: list[str] = field(default_factory=list)
    _routes: list[Route] | None = None

    def path(self, value: str | Path) -> Path:
        """A path from the graph, resolved against the graph file's folder when relative."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else self.graph.root / p

    def field(self, name: str) -> VelocityField:
        """The built field node ``name`` (built on first use, then shared); frozen, on ``device``."""
        if name not in self._fields:
            if name in self._building:
                raise GraphError(f"cycle while building {' -> '.join([*self._building, name])}")
            self._building.append(name)
            try:
                built = self._build(("fields", name), self.graph.nodes[name])
            finally:
                self._building.pop()
            if isinstance(built, nn.Module):  # every built field is a frozen teacher
                built = built.to(self.device).eval().requires_grad_(False)
            self._fields[name] = built
        return self._fields[name]

    def build(self, loc: tuple[str | int, ...], typed: Typed) -> Any:
        """Build any typed entry (dataset, method, metric) with errors that name where it is."""
        return self._build(loc, typed)

    def routes(self) -> list[Route]:
        """The routes in YAML order: each one's field, data bucket, weight and metrics (built once)."""
        if self._routes is None:
            graph = self.graph
            if not graph.spec.routes:
                raise FieldkitError(f"{graph.source.path} has no routes", hint="add a 'routes' section")
            self._routes = [
                Route(
                    name,
                    None if spec.field is None else self.field(spec.field),
                    self.build(("routes", name, "data"), graph.datasets[name]),
                    spec.weight,
                    tuple(
                        self.build(("routes", name, "metrics", i), typed)
                        for i, typed in enumerate(graph.metrics.get(name, ()))
                    ),
                )
                for name, spec in graph.spec.routes.items()
            ]
        return self._routes

    def router(self) -> Router:
        """The graph's router: its factory receives :meth:`routes` (``factory(params, routes, ctx)``)."""
        routes = self.routes()
        return self._build(("router",), self.graph.router, routes)

    def _build(self, loc: tuple[str | int, ...], typed: Typed, *inputs: Any) -> Any:
        reg = typed.registration
        where = f"{self.graph.source.where(loc)}: {'.'.join(map(str, loc))}"
        try:
            return typed.registration.factory(typed.params, *inputs, self)
        except GraphError:
            raise
        except FieldkitError as exc:
            raise GraphError(f"{where}: {exc.message}", hint=exc.hint) from exc
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a factory calling sys.exit is the plugin's failure too
            raise GraphError(
                f"{where}: {reg.kind} type {reg.name!r} (plugin {reg.plugin!r}) failed to build: "
                f"{type(exc).__name__}: {exc}",
                hint="run with --debug for the traceback",
            ) from exc
