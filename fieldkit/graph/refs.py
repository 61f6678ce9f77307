"""``FieldRef``: a parameter that names another node of the graph."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, GetCoreSchemaHandler
from pydantic_core import core_schema


class FieldRef(str):
    """The name of another field node. Declare a parameter as ``FieldRef`` (or ``list[FieldRef]``) and the
    graph checks that the node exists, orders the build by it and refuses cycles."""

    __slots__ = ()

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(min_length=1), serialization=core_schema.to_string_ser_schema()
        )


def find_refs(
    value: Any, loc: tuple[str | int, ...] = ()
) -> Iterator[tuple[tuple[str | int, ...], FieldRef]]:
    """Every ``FieldRef`` inside validated parameters, with its location (key path)."""
    if isinstance(value, FieldRef):
        yield loc, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from find_refs(getattr(value, name), (*loc, name))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from find_refs(item, (*loc, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from find_refs(item, (*loc, key))
