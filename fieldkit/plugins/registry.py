"""Registries of named types (sources, operators, routers, methods, datasets, metrics).

Every type owns a pydantic ``Params`` model and a ``factory(params, ctx)``; the registry remembers which
plugin registered it, so listings and errors can name the plugin.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from fieldkit.errors import PluginError

KINDS: tuple[str, ...] = ("source", "operator", "router", "method", "dataset", "metric")
#: The arguments the core calls each kind's factory with.
FACTORY_ARGS: dict[str, tuple[str, ...]] = {
    kind: ("params", "routes", "ctx") if kind == "router" else ("params", "ctx") for kind in KINDS
}


class Params(BaseModel):
    """Base of every type's parameters: unknown keys are errors, never silently ignored, and so are
    non-finite numbers (``.inf``, ``.nan``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Registration:
    """One registered type: its kind, name, factory, parameter model and the plugin that registered it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: type[BaseModel]
    plugin: str
    description: str = ""


@dataclass
class Registry:
    """All registered types, keyed by kind then name; problems found while registering are kept."""

    entries: dict[str, dict[str, Registration]] = field(default_factory=lambda: {k: {} for k in KINDS})
    problems: list[str] = field(default_factory=list)

    def add(self, registration: Registration) -> None:
        """Add a registration; a name taken by another plugin is kept as a problem, the first one wins."""
        table = self.entries[registration.kind]
        existing = table.get(registration.name)
        if existing is not None:
            self.problems.append(
                f"{registration.kind} {registration.name!r} from plugin {registration.plugin!r} is ignored: "
                f"plugin {existing.plugin!r} registered that name first"
            )
            return
        table[registration.name] = registration

    def get(self, kind: str, name: str) -> Registration:
        """The registration of ``name``, or a PluginError that lists the known names of that kind."""
        try:
            return self.entries[kind][name]
        except KeyError:
            raise PluginError(unknown_type_message(kind, name, self.names(kind))) from None

    def names(self, kind: str) -> list[str]:
        """The registered names of one kind, sorted."""
        return sorted(self.entries[kind])

    def __iter__(self) -> Iterator[Registration]:
        for kind in KINDS:
            yield from self.entries[kind].values()

    def by_plugin(self) -> dict[str, dict[str, list[str]]]:
        """``{plugin: {kind: [names]}}`` for listings."""
        out: dict[str, dict[str, list[str]]] = {}
        for reg in self:
            out.setdefault(reg.plugin, {}).setdefault(reg.kind, []).append(reg.name)
        return out


def unknown_type_message(kind: str, name: str, known: list[str]) -> str:
    """``unknown source type 'x'; did you mean 'y'? known: a, b, c``."""
    close = difflib.get_close_matches(name, known, n=1)
    guess = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} type {name!r}{guess} (known {kind} types: {', '.join(known) or 'none'})"


def make_register(registry: Registry, kind: str, plugin: str) -> Callable[..., None]:
    """The ``register`` callback handed to one plugin's hook for one kind (typed for plugins as
    :class:`~fieldkit.protocols.Register` of that kind). A factory that cannot take the arguments its kind
    is called with (``(params, ctx)``; routers ``(params, routes, ctx)``) is refused here, by name."""

    def register(
        name: str,
        factory: Callable[..., Any],
        params: type[BaseModel] = Params,
        *,
        description: str = "",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} with an empty or non-string name")
        if not callable(factory):
            raise PluginError(
                f"plugin {plugin!r} registered {kind} {name!r} with a factory that is not callable"
            )
        if not _takes(factory, FACTORY_ARGS[kind]):
            raise PluginError(
                f"plugin {plugin!r} registered {kind} {name!r} with a factory that cannot be called as "
                f"factory({', '.join(FACTORY_ARGS[kind])})"
            )
        if not (isinstance(params, type) and issubclass(params, BaseModel)):
            raise PluginError(
                f"plugin {plugin!r} registered {kind} {name!r} whose params is not a pydantic model"
            )
        doc = description or (factory.__doc__ or "").strip().splitlines()[0:1]
        text = doc if isinstance(doc, str) else (doc[0] if doc else "")
        registry.add(Registration(kind, name, factory, params, plugin, text))

    return register


def _takes(factory: Callable[..., Any], names: tuple[str, ...]) -> bool:
    """Whether ``factory`` can be called with ``len(names)`` positional arguments (True when its signature
    cannot be read, as for some builtins: the call itself will say)."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*names)
    except TypeError:
        return False
    return True
