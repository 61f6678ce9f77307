"""The JSON schema of a graph file, built from the registry, for editors (``fieldkit schema``).

Every typed entry (a field, a route's data and metrics, the router, the method) becomes a union of the
registered types of its kind, discriminated on ``type``: each member is that type's ``Params`` schema plus
``type: const NAME``. So an editor completes type names and each type's keys, and flags unknown keys.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import GenericAlias
from typing import Annotated, Any, Literal, Union, get_origin

from pydantic import BaseModel, Field, create_model
from pydantic.fields import FieldInfo

from fieldkit.graph.loader import FIELD_KINDS
from fieldkit.graph.schema import NODE_NAME, GraphSpec, RouteSpec, TypedSpec
from fieldkit.plugins.registry import Registration, Registry

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _member(reg: Registration) -> type[BaseModel]:
    """``reg.params`` with a ``type`` key fixed to the registered name."""
    doc = reg.description or reg.params.__doc__ or f"{reg.kind} {reg.name!r}"
    kind: Any = Literal.__getitem__(reg.name)  # built at run time: Literal["<the registered name>"]
    info = Field(description=f"{reg.kind} from plugin {reg.plugin!r}")
    model_name = re.sub(r"\W", "_", f"{reg.kind}_{reg.name}")  # pydantic names schema $defs after models
    return create_model(model_name, __base__=reg.params, __doc__=doc, type=(kind, info))


def _union(registry: Registry, kinds: Sequence[str]) -> Any:
    """The union of every registered type of ``kinds`` (one type is itself; none is any ``TypedSpec``)."""
    members = [_member(registry.entries[kind][name]) for kind in kinds for name in registry.names(kind)]
    return Union[tuple(members)] if members else TypedSpec  # noqa: UP007


def _one_of(annotation: Any) -> Any:
    """``annotation``, discriminated on ``type`` when it is a union."""
    if get_origin(annotation) is Union:
        return Annotated[annotation, Field(discriminator="type")]
    return annotation


def _retyped(model: type[BaseModel], name: str, annotation: Any, **schema: Any) -> tuple[Any, FieldInfo]:
    """Field ``name`` of ``model`` with a new annotation; its description, default and constraints are kept,
    and ``schema`` is added to its JSON schema."""
    extra: dict[str, Any] = {"json_schema_extra": schema} if schema else {}
    if get_origin(annotation) is Union:
        extra["discriminator"] = "type"
    return annotation, FieldInfo.merge_field_infos(model.model_fields[name], **extra)


def graph_schema(registry: Registry) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a graph file, given the registered types."""
    names = {"pattern": NODE_NAME}
    # Generic aliases built at run time from the registry (``dict[str, X]``, ``list[X]``).
    fields = GenericAlias(dict, (str, _one_of(_union(registry, FIELD_KINDS))))
    route = create_model(
        "RouteSpec",
        __base__=RouteSpec,
        __doc__=RouteSpec.__doc__,
        data=_retyped(RouteSpec, "data", _union(registry, ("dataset",))),
        metrics=_retyped(RouteSpec, "metrics", GenericAlias(list, (_one_of(_union(registry, ("metric",))),))),
    )
    graph = create_model(
        "GraphSpec",
        __base__=GraphSpec,
        __doc__=GraphSpec.__doc__,
        fields=_retyped(GraphSpec, "fields", fields, propertyNames=names),
        routes=_retyped(GraphSpec, "routes", GenericAlias(dict, (str, route)), propertyNames=names),
        router=_retyped(GraphSpec, "router", _union(registry, ("router",)), default={"type": "hard"}),
        method=_retyped(GraphSpec, "method", _union(registry, ("method",)), default={"type": "danceopd"}),
    )
    schema = graph.model_json_schema()
    schema["title"] = "fieldkit field graph"
    return {"$schema": DIALECT, **schema}
