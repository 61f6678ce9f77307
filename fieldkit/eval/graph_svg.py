"""A picture of a field graph (inline SVG, no other file): sources -> operators -> routes -> student.

Read from a run's ``graph.json``: a field whose parameters name other fields is an operator over them (its
column is one past its deepest input), any other field is a source; each route takes its field, and every
route is distilled into the student, which starts from ``student.init`` (a dashed edge).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 150, 44, 60, 16, 12
KIND_COLOURS = {"source": "#e8f0fe", "operator": "#fef7e0", "route": "#e6f4ea", "student": "#fce8e6"}


@dataclass(frozen=True)
class Node:
    """One box: a field, a route or the student, with the text under its name."""

    key: str
    name: str
    detail: str
    kind: str
    column: int


def _references(value: Any, names: set[str]) -> list[str]:
    """The field names a parameter value holds (a string, or strings in lists and nested mappings)."""
    if isinstance(value, str):
        return [value] if value in names else []
    if isinstance(value, list):
        return [ref for item in value for ref in _references(item, names)]
    if isinstance(value, Mapping):
        return [ref for item in value.values() for ref in _references(item, names)]
    return []


def graph_nodes(graph: Mapping[str, Any]) -> tuple[list[Node], list[tuple[str, str, bool]]]:
    """The boxes (with their columns) and the edges ``(from, to, dashed)`` of ``graph`` (graph.json)."""
    fields: Mapping[str, Any] = graph.get("fields") or {}
    names = set(fields)
    inputs = {
        name: list(
            dict.fromkeys(r for k, v in (spec or {}).items() if k != "type" for r in _references(v, names))
        )
        for name, spec in fields.items()
    }
    depth: dict[str, int] = {}

    def column(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in depth:
            ins = [i for i in inputs.get(name, []) if i not in seen]
            depth[name] = 1 + max((column(i, seen | {name}) for i in ins), default=-1)
        return depth[name]

    nodes = [
        Node(
            f"field:{name}",
            name,
            str((spec or {}).get("type", "")),
            "operator" if inputs[name] else "source",
            column(name),
        )
        for name, spec in fields.items()
    ]
    edges = [(f"field:{i}", f"field:{name}", False) for name in fields for i in inputs[name]]
    routes: Mapping[str, Any] = graph.get("routes") or {}
    route_column = 1 + max((n.column for n in nodes), default=-1)
    for name, route in routes.items():
        data = (route or {}).get("data") or {}
        nodes.append(Node(f"route:{name}", name, f"route: {data.get('type', '')}", "route", route_column))
        if (route or {}).get("field") in names:
            edges.append((f"field:{route['field']}", f"route:{name}", False))
        edges.append((f"route:{name}", "student", False))
    student = graph.get("student") or {}
    ema = f", EMA {student['ema']}" if student.get("ema") else ""
    nodes.append(
        Node("student", "student", f"{student.get('train', 'full')}{ema}", "student", route_column + 1)
    )
    if student.get("init") in names:
        edges.append((f"field:{student['init']}", "student", True))
    return nodes, edges


def graph_svg(graph: Mapping[str, Any]) -> str:
    """The picture of ``graph`` as an ``<svg>`` element sized to its content (it does not shrink to fit: put
    it in a scrolling container on narrow screens)."""
    nodes, edges = graph_nodes(graph)
    columns: dict[int, list[Node]] = {}
    for node in nodes:
        columns.setdefault(node.column, []).append(node)
    tallest = max(len(c) for c in columns.values())
    height = PAD * 2 + tallest * BOX_H + (tallest - 1) * GAP_Y + 18
    width = PAD * 2 + len(columns) * BOX_W + (len(columns) - 1) * GAP_X
    where: dict[str, tuple[float, float]] = {}
    for index, col in enumerate(sorted(columns)):
        stack = columns[col]
        top = 18 + PAD + (tallest - len(stack)) * (BOX_H + GAP_Y) / 2
        for row, node in enumerate(stack):
            where[node.key] = (PAD + index * (BOX_W + GAP_X), top + row * (BOX_H + GAP_Y))
    heads = {"source": "sources", "operator": "operators", "route": "routes", "student": "student"}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height:.0f}" '
        f'viewBox="0 0 {width} {height:.0f}" role="img" aria-label="the field graph">',
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" markerHeight="7" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#666"/></marker></defs>',
    ]
    for stack in columns.values():
        kinds = {node.kind for node in stack}
        label = heads["operator" if "operator" in kinds else stack[0].kind]
        x = where[stack[0].key][0] + BOX_W / 2
        parts.append(f'<text x="{x:.0f}" y="14" text-anchor="middle" class="head">{label}</text>')
    for a, b, dashed in edges:
        (x1, y1), (x2, y2) = where[a], where[b]
        style = ' stroke-dasharray="4 3"' if dashed else ""
        parts.append(
            f'<line x1="{x1 + BOX_W:.0f}" y1="{y1 + BOX_H / 2:.0f}" x2="{x2:.0f}" y2="{y2 + BOX_H / 2:.0f}" '
            f'stroke="#666" stroke-width="1.2"{style} marker-end="url(#arrow)"/>'
        )
    for node in nodes:
        x, y = where[node.key]
        name, detail = html.escape(_fit(node.name, 18)), html.escape(_fit(node.detail, 24))
        parts.append(
            f"<g><title>{html.escape(node.kind)} {html.escape(node.name)}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="6" '
            f'fill="{KIND_COLOURS[node.kind]}" stroke="#888"/>'
            f'<text x="{x + 8:.0f}" y="{y + 18:.0f}" class="name">{name}</text>'
            f'<text x="{x + 8:.0f}" y="{y + 35:.0f}" class="detail">{detail}</text>'
            "</g>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _fit(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters with an ellipsis (the whole name is in the box's tooltip)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
