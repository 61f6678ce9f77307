"""fieldkit.eval.svg_chart: ticks at round numbers inside the axis, data mapped into the plot area (linear and
logarithmic), a legend entry per label, and text escaped."""

from __future__ import annotations

import itertools
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldkit.eval.svg_chart import MARGIN, Line, Panel, chart, linear_ticks, log_ticks

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(finite, st.floats(min_value=1e-3, max_value=1e6), st.integers(min_value=-20, max_value=20))
def test_linear_ticks_are_round_evenly_spaced_and_inside_the_range(low: float, span: float, k: int) -> None:
    low, span = low * 10.0**k, span * 10.0**k  # any magnitude: losses of 1e-14 included
    high = low + span
    ticks = linear_ticks(low, high)
    assert 2 <= len(ticks) <= 6  # at most count + 1; the step is at most 2.5x (range / count)
    assert all(low - 1e-9 * span <= t <= high + 1e-9 * span for t in ticks)
    step = ticks[1] - ticks[0]
    assert step > 0
    assert all(math.isclose(b - a, step, rel_tol=1e-6) for a, b in itertools.pairwise(ticks))
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5))


@given(
    st.floats(min_value=1e-8, max_value=1e6),
    st.floats(min_value=1.5, max_value=1e6),
    st.integers(min_value=-12, max_value=12),
)
def test_log_ticks_hold_every_power_of_ten_in_the_range(low: float, ratio: float, k: int) -> None:
    low *= 10.0**k
    high = low * ratio
    ticks = log_ticks(low, high)
    assert all(low * (1 - 1e-9) <= t <= high * (1 + 1e-9) for t in ticks)
    assert all(t > 0 for t in ticks)  # a logarithmic axis cannot place zero (its linear fallback once did)
    powers = [10.0**e for e in range(-21, 25) if low <= 10.0**e <= high]
    assert all(any(math.isclose(p, t) for t in ticks) for p in powers)
    assert len(ticks) >= 2  # a short range gets 2x and 5x, or linear ticks


def _points(svg: str) -> list[list[tuple[float, float]]]:
    return [
        [tuple(map(float, p.split(","))) for p in found.split()]  # type: ignore[misc]
        for found in re.findall(r'<polyline points="([^"]+)"', svg)
    ]


def test_a_line_is_mapped_into_the_plot_area_in_order_with_five_percent_of_room() -> None:
    width, height = 400.0, 300.0
    svg = chart([Panel([Line([0, 1, 2], [0.0, 5.0, 10.0], "#000")])], width=width, height=height)
    [points] = _points(svg)
    w = width - MARGIN["left"] - MARGIN["right"]
    h = height - MARGIN["top"] - MARGIN["bottom"]
    x0, bottom = MARGIN["left"], MARGIN["top"] + h
    expected = [(x0 + (0.1 + i) / 2.2 * w, bottom - (0.5 + 5 * i) / 11 * h) for i in range(3)]
    for (x, y), (ex, ey) in zip(points, expected, strict=True):
        assert abs(x - ex) <= 0.05 and abs(y - ey) <= 0.05


def test_a_log_axis_spaces_decades_equally_and_falls_back_to_linear_for_non_positive_values() -> None:
    [log] = _points(chart([Panel([Line([0, 1, 2], [1.0, 10.0, 100.0], "#000")], log=True)]))
    assert math.isclose(log[0][1] - log[1][1], log[1][1] - log[2][1], abs_tol=0.11)
    [linear] = _points(chart([Panel([Line([0, 1, 2], [0.0, 10.0, 100.0], "#000")], log=True)]))
    gaps = (linear[0][1] - linear[1][1], linear[1][1] - linear[2][1])
    assert math.isclose(gaps[1] / gaps[0], 9.0, rel_tol=0.01)


@pytest.mark.parametrize("log", [True, False])
def test_losses_of_1e_14_that_vary_get_an_axis_of_their_own(log: bool) -> None:
    """A LoRA student starting at its teacher logs losses of ~1e-14: the run report draws them (its log axis
    once fell back to ticks rounded to 12 decimals, i.e. 0, and failed the run at its end; a linear axis
    called them flat and squeezed them into a line)."""
    ys = [6.164e-15, 9.094e-15, 1.108e-14, 1.428e-14, 1.01e-14]
    height = 300.0
    svg = chart([Panel([Line(range(len(ys)), ys, "#000")], log=log)], height=height)
    [points] = _points(svg)
    top, bottom = MARGIN["top"], height - MARGIN["bottom"]
    pixels = [y for _, y in points]
    assert all(top <= y <= bottom for y in pixels)
    assert sorted(range(5), key=lambda i: -pixels[i]) == sorted(range(5), key=lambda i: ys[i])
    assert pixels[0] - pixels[3] > 0.8 * (bottom - top)  # min and max 5% from the frame's edges
    labels = [float(t) for t in re.findall(r'text-anchor="end">([^<]+)<', svg)]
    assert len(labels) >= 2 and all(min(ys) * 0.9 <= t <= max(ys) * 1.1 for t in labels)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_points_that_are_not_finite_are_left_out_of_the_lines_and_the_axes(bad: float) -> None:
    """A NaN or an infinity among the values draws the finite points on the axis they alone would get (an
    infinity once made the log axis raise, a NaN wrote "nan" into the SVG)."""
    for log in (True, False):
        clean = chart([Panel([Line([0, 2], [1.0, 0.5], "#000", markers=True)], log=log)])
        svg = chart([Panel([Line([0, 1, 2], [1.0, bad, 0.5], "#000", markers=True)], log=log)])
        assert "nan" not in svg and "inf" not in svg
        [points] = _points(svg)
        assert len(points) == 2 and svg.count("<circle") == 2
        assert svg == clean  # the same chart as without the point


def test_the_legend_lists_each_label_once_and_text_is_escaped() -> None:
    lines = [
        Line([0, 1], [1, 2], "#111", label="run <a>: t2i"),
        Line([0, 1], [2, 3], "#222", label="run <a>: t2i"),
    ]
    svg = chart([Panel(lines, title="loss & more"), Panel([Line([0, 1], [3, 1], "#333", label="b")])])
    assert svg.count(">run &lt;a&gt;: t2i</text>") == 1 and svg.count(">b</text>") == 1
    assert ">loss &amp; more</text>" in svg and "<a>" not in svg
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg"') and svg.endswith("</svg>")


def test_a_chart_without_panels_is_refused_and_a_panel_without_points_still_draws_its_axes() -> None:
    with pytest.raises(ValueError, match="at least one panel"):
        chart([])
    svg = chart([Panel([Line([], [], "#000")], title="empty")])
    assert "<rect" in svg and "<polyline" not in svg and ">empty</text>" in svg
