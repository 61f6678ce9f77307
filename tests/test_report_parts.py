"""The report's parts that have a closed form: the field graph's picture (columns and edges from the graph)
and the loss smoothing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldkit import loads_graph
from fieldkit.eval.graph_svg import graph_nodes, graph_svg
from fieldkit.eval.report_plots import constant, smooth

GRAPH = """
fields:
  t2i: {type: gaussian_mixture, classes: 2, shape: [1, 4, 4]}
  edit: {type: gaussian_mixture, classes: 2, shape: [1, 4, 4], seed: 1}
  guided: {type: guidance, field: t2i, w: 2.0}
  arith: {type: merge, fields: [t2i, edit], weights: [0.5, 0.5]}
  both: {type: sum, fields: [guided, edit]}
routes:
  a: {field: both, data: {type: gaussian_mixture, classes: 2, shape: [1, 4, 4]}}
  b: {field: edit, data: {type: gaussian_mixture, classes: 2, shape: [1, 4, 4]}}
student: {init: arith, ema: 0.99}
"""


def test_the_graph_picture_puts_sources_operators_routes_and_the_student_in_columns():
    spec = loads_graph(GRAPH).spec.model_dump(mode="json")
    nodes, edges = graph_nodes(spec)
    columns = {n.key: (n.kind, n.column) for n in nodes}
    assert columns == {
        "field:t2i": ("source", 0),
        "field:edit": ("source", 0),
        "field:guided": ("operator", 1),
        "field:arith": ("operator", 1),
        "field:both": ("operator", 2),  # one past its deepest input
        "route:a": ("route", 3),
        "route:b": ("route", 3),
        "student": ("student", 4),
    }
    assert set(edges) == {
        ("field:t2i", "field:guided", False),
        ("field:t2i", "field:arith", False),
        ("field:edit", "field:arith", False),
        ("field:guided", "field:both", False),
        ("field:edit", "field:both", False),
        ("field:both", "route:a", False),
        ("field:edit", "route:b", False),
        ("route:a", "student", False),
        ("route:b", "student", False),
        ("field:arith", "student", True),  # the student's init: dashed
    }
    svg = graph_svg(spec)
    assert svg.count("<rect") == len(nodes) and svg.count("<line") == len(edges)
    assert "full, EMA 0.99" in svg


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=50), st.integers(1, 20))
def test_smoothing_keeps_the_first_point_and_constants_and_stays_within_the_range(values, span):
    out = smooth(values, span)
    assert out[0] == pytest.approx(values[0])
    assert min(values) - 1e-6 <= min(out) and max(out) <= max(values) + 1e-6
    assert constant(smooth([3.0] * len(values), span))
    assert smooth(values, 1) == pytest.approx(values)
