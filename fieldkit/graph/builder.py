"""Build the objects of a validated graph, lazily: a node is built (and its weights read) only when used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fieldkit.errors import FieldkitError, GraphError, PluginError
from fieldkit.field import VelocityField
from fieldkit.graph.loader import Graph, Typed
from fieldkit.protocols import DataBucket, Method, Metric, Route, Router


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
                built = self._checked(("fields", name), self.graph.nodes[name])
            finally:
                self._building.pop()
            if isinstance(built, nn.Module):  # every built field is a frozen teacher
                built = built.to(self.device).eval().requires_grad_(False)
            assert isinstance(built, VelocityField)
            self._fields[name] = built
        return self._fields[name]

    def built_fields(self) -> list[VelocityField]:
        """The field nodes built so far (by the routes, the student, other fields), in build order."""
        return list(self._fields.values())

    def build(self, loc: tuple[str | int, ...], typed: Typed) -> object:
        """Build any typed entry with errors that name where it is; the result is checked against its kind's
        protocol (:mod:`fieldkit.protocols`)."""
        return self._checked(loc, typed)

    def data(self, route: str) -> DataBucket:
        """The data bucket of route ``route``."""
        loc = ("routes", route, "data")
        bucket = self._checked(loc, self.graph.datasets[route])
        assert isinstance(bucket, DataBucket)
        return bucket

    def metrics(self, route: str) -> tuple[Metric, ...]:
        """The metrics of route ``route``, in YAML order."""
        built = []
        for i, typed in enumerate(self.graph.metrics.get(route, ())):
            metric = self._checked(("routes", route, "metrics", i), typed)
            assert isinstance(metric, Metric)
            built.append(metric)
        return tuple(built)

    def method(self) -> Method:
        """The graph's method."""
        method = self._checked(("method",), self.graph.method)
        assert isinstance(method, Method)
        return method

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
                    self.data(name),
                    spec.weight,
                    self.metrics(name),
                )
                for name, spec in graph.spec.routes.items()
            ]
        return self._routes

    def router(self) -> Router:
        """The graph's router: its factory receives :meth:`routes` (``factory(params, routes, ctx)``)."""
        router = self._checked(("router",), self.graph.router, self.routes())
        assert isinstance(router, Router)
        return router

    def where(self, loc: tuple[str | int, ...]) -> str:
        """``file:line: dotted.key`` of a place in the graph, for error messages."""
        return f"{self.graph.source.where(loc)}: {'.'.join(map(str, loc))}"

    def _checked(self, loc: tuple[str | int, ...], typed: Typed, *inputs: object) -> object:
        """Build ``typed`` and refuse an object that is not of its kind, naming the plugin and the type."""
        built = self._build(loc, typed, *inputs)
        reg = typed.registration
        protocol, wanted = KIND_PROTOCOLS[reg.kind]
        if not isinstance(built, protocol):
            raise PluginError(
                f"{self.where(loc)}: {reg.kind} type {reg.name!r} (plugin {reg.plugin!r}) built "
                f"{type(built).__name__}, which is not {wanted}",
                hint=f"the factory of {reg.name!r} must return {wanted} (see docs/plugins.md)",
            )
        return built

    def _build(self, loc: tuple[str | int, ...], typed: Typed, *inputs: object) -> object:
        reg = typed.registration
        where = self.where(loc)
        try:
            return reg.factory(typed.params, *inputs, self)
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


# What a factory of each kind must return: the protocol checked, and its description for the error.
KIND_PROTOCOLS: dict[str, tuple[type, str]] = {
    "source": (VelocityField, "a velocity field (callable as field(x, sigma, cond) -> v)"),
    "operator": (VelocityField, "a velocity field (callable as field(x, sigma, cond) -> v)"),
    "dataset": (DataBucket, "a data bucket (.shape and .sample(batch_size, generator) -> Batch)"),
    "metric": (Metric, "a metric (callable as metric(samples, batch) -> {name: value})"),
    "method": (Method, "a method (.rollout_steps(default) and .loss(inputs) -> LossOutput)"),
    "router": (Router, "a router (.routes, .plan(micro_batches, generator, step) and .target(index))"),
}
