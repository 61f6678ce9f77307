"""Registries of named types (sources, operators, routers, methods, datasets, metrics).

Every type owns a pydantic ``Params`` model and a ``factory(params, ctx)``; the registry remembers which
plugin registered it, so listings and errors can name the plugin.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator

from fieldkit.errors import PluginError

KINDS: tuple[str, ...] = ("source", "operator", "router", "method", "dataset", "metric")
#: The arguments the core calls each kind's factory with.
FACTORY_ARGS: dict[str, tuple[str, ...]] = {
    kind: ("params", "routes", "ctx") if kind == "router" else ("params", "ctx") for kind in KINDS
}


def _numeric(annotation: Any) -> bool:
    """Whether ``annotation`` takes numbers and not booleans (``int``, ``float``, their lists, optionals)."""
    if annotation is bool:
        return False
    if annotation in (int, float):
        return True
    args = get_args(annotation)
    return bool(args) and bool not in args and any(_numeric(arg) for arg in args)


def _has_bool(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value))


def boolean_keys(model: type[BaseModel], data: Any) -> list[str]:
    """The keys of ``data`` (a mapping for ``model``) whose field takes numbers and whose value is ``true``
    or ``false`` (or a list holding one)."""
    if not isinstance(data, dict):
        return []
    return [
        name
        for name, info in model.model_fields.items()
        if _has_bool(data.get(info.alias or name)) and _numeric(info.annotation)
    ]


def refuse_booleans(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A field's ``value``, refused where the field takes numbers and it is ``true`` or ``false`` (or a list
    holding one): pydantic would read them as 1 and 0. For a ``field_validator("*", mode="before")``."""
    name = info.field_name
    if name is not None and _has_bool(value) and _numeric(model.model_fields[name].annotation):
        raise ValueError("a number belongs here, not a boolean (true or false); write the number")
    return value


class Params(BaseModel):
    """Base of every type's parameters: unknown keys are errors, never silently ignored, and so are
    non-finite numbers (``.inf``, ``.nan``) and booleans where a number belongs (``shape: [1, 8, true]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans(cls, data: Any) -> Any:
        # a model validator: the JSON schema adds a discriminator ``type`` field, which field validators
        # must not touch
        found = boolean_keys(cls, data)
        if found:
            raise ValueError(
                f"{', '.join(found)}: a number belongs here, not a boolean (true or false); write the number"
            )
        return data


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
    :class:`~fieldkit.protocols.Register` of that kind). What cannot work is refused here, naming the plugin
    and the type: a factory that cannot take the arguments its kind is called with (``(params, ctx)``;
    routers ``(params, routes, ctx)``), params that are not a pydantic model, a description that is not a
    string. Params that would take unknown keys are made to refuse them (:func:`_forbidding`)."""

    def register(
        name: str,
        factory: Callable[..., Any],
        params: type[BaseModel] = Params,
        *,
        description: str = "",
    ) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {plugin!r} registered a {kind} with an empty or non-string name")
        mistake = _mistake(kind, factory, params, description)
        if mistake is not None:
            raise PluginError(f"plugin {plugin!r} registered {kind} {name!r} {mistake}")
        text = description or _first_line(factory.__doc__)
        registry.add(Registration(kind, name, factory, _forbidding(params), plugin, text))

    return register


def _mistake(kind: str, factory: object, params: object, description: object) -> str | None:
    """What is wrong with one registration's arguments (``with a factory that ...``), or None."""
    if not callable(factory):
        return "with a factory that is not callable"
    if not _takes(factory, FACTORY_ARGS[kind]):
        return f"with a factory that cannot be called as factory({', '.join(FACTORY_ARGS[kind])})"
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        return "whose params is not a pydantic model"
    if not isinstance(description, str):
        return f"with a description that is not a string ({type(description).__name__})"
    return None


@functools.cache
def _forbidding(params: type[BaseModel]) -> type[BaseModel]:
    """``params`` if it refuses unknown keys (every :class:`Params` does), else a subclass of the same name
    that does. A plugin's plain ``BaseModel`` (pydantic drops unknown keys) or ``extra="allow"`` model would
    let a misspelled key in a graph be ignored silently; it is tightened here rather than refused, so that
    the plugin still loads and its factory still gets an instance of its class (a subclass). The plugin's
    class itself is left as it is."""
    if params.model_config.get("extra") == "forbid":
        return params
    namespace = {
        "model_config": ConfigDict(extra="forbid"),
        "__module__": params.__module__,
        "__qualname__": params.__qualname__,
        "__doc__": params.__doc__,
    }
    return type(params.__name__, (params,), namespace)


def _first_line(doc: str | None) -> str:
    """The first line of a docstring ("" for none)."""
    lines = (doc or "").strip().splitlines()
    return lines[0] if lines else ""


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
