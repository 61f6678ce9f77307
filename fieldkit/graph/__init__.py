"""Field graphs: the YAML schema, loading with line-numbered errors, and lazy building."""

from fieldkit.graph.builder import BuildContext
from fieldkit.graph.loader import Graph, Typed, load_graph, loads_graph
from fieldkit.graph.refs import FieldRef
from fieldkit.graph.schema import GraphSpec

__all__ = ["BuildContext", "FieldRef", "Graph", "GraphSpec", "Typed", "load_graph", "loads_graph"]
