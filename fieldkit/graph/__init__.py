"""Field graphs: the YAML schema, loading with line-numbered errors, and lazy building.

Loading and validating need no torch; :class:`BuildContext` (which builds nodes) imports it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fieldkit.graph.loader import Graph, Typed
from fieldkit.graph.refs import FieldRef
from fieldkit.graph.schema import GraphSpec

if TYPE_CHECKING:
    from fieldkit.graph.builder import BuildContext


def __getattr__(name: str) -> Any:
    if name == "BuildContext":
        from fieldkit.graph.builder import BuildContext

        return BuildContext
    raise AttributeError(f"module 'fieldkit.graph' has no attribute {name!r}")


__all__ = ["BuildContext", "FieldRef", "Graph", "GraphSpec", "Typed"]
