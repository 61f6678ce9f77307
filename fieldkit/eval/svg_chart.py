"""Line charts as inline SVG, written directly (no plotting library): panels side by side, each with its
axes, ticks, grid and lines, and one legend under them. The run report draws its loss and training-metric
plots with it, so that writing ``report.html`` at the end of a run imports nothing heavy.

A panel maps data to pixels linearly, ``px = left + (x - x0) / (x1 - x0) * width``, on ``log10`` of the
values when its y axis is logarithmic; ticks sit at ``{1, 2, 5} x 10^k`` (linear) or at powers of ten
(logarithmic, with their 2x and 5x when the range spans less than two decades). Points that are not finite
(NaN, infinities) are left out of the lines and the axes."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Line colours, in order (matplotlib's default cycle, so that the report keeps its colours).
PALETTE = (
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"),
    *("#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
)
#: Dash patterns (SVG ``stroke-dasharray``): solid, dashed, dotted, dash-dot.
DASHES = ("", "6 3", "1.5 3", "6 3 1.5 3")
FONT = 'font-family="system-ui, sans-serif" font-size="13"'
#: Strokes keep their width in screen pixels when a narrow screen scales the chart down (inline SVG's style
#: applies to the whole page: scoped to the charts).
STYLE = "<style>svg.chart :is(line, rect, polyline) { vector-effect: non-scaling-stroke; }</style>"
MARGIN = {"left": 54, "right": 12, "top": 24, "bottom": 40}
LEGEND_ROW, LEGEND_ITEM = 18, 170  # a legend row's height; the width one entry takes


@dataclass(frozen=True)
class Line:
    """A polyline of ``(x, y)`` points; ``label`` puts it in the legend (once per label)."""

    x: Sequence[float]
    y: Sequence[float]
    colour: str
    dash: str = ""
    width: float = 2.2
    opacity: float = 1.0
    markers: bool = False
    label: str | None = None


@dataclass(frozen=True)
class Panel:
    """One set of axes: its lines, title and axis labels; ``log``: a logarithmic y axis."""

    lines: Sequence[Line]
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    log: bool = False


def linear_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Ticks at multiples of the smallest step ``{1, 2, 5} x 10^k`` that gives at most ``count`` + 1 of them
    in ``[low, high]``, at any magnitude (each rounded to 12 significant digits, not to 12 decimals)."""
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [float(f"{i * step:.12g}") for i in range(first, last + 1)]


def log_ticks(low: float, high: float) -> list[float]:
    """Ticks in ``[low, high]`` (both > 0): the powers of ten, and their 2x and 5x when the range spans less
    than two decades; linear ticks where that leaves fewer than two."""
    lo, hi = math.floor(math.log10(low)), math.ceil(math.log10(high))
    mantissas = (1, 2, 5) if math.log10(high / low) < 2 else (1,)
    ticks = [m * 10.0**e for e in range(lo, hi + 1) for m in mantissas]
    ticks = [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
    return ticks if len(ticks) >= 2 else linear_ticks(low, high)  # a range too short for 1-2-5


def _limits(values: Sequence[float]) -> tuple[float, float]:
    """``[min, max]`` of ``values`` widened by 5% on each side (by 1, or 10% of the value, when flat: equal to
    12 significant digits, so that losses of 1e-14 that vary still get an axis of their own)."""
    low, high = min(values), max(values)
    if high - low <= 1e-12 * max(abs(low), abs(high)):
        pad = abs(high) * 0.1 or 1.0
        return low - pad, high + pad
    pad = 0.05 * (high - low)
    return low - pad, high + pad


def _finite(line: Line) -> list[tuple[float, float]]:
    """The points of ``line`` whose ``x`` and ``y`` are both finite (a NaN or an infinity is left out)."""
    return [
        (float(x), float(y))
        for x, y in zip(line.x, line.y, strict=True)
        if math.isfinite(float(x)) and math.isfinite(float(y))
    ]


def _number(value: float) -> str:
    return f"{value:.1f}"


def _label(value: float) -> str:
    return f"{value:g}"


def _dash(line: Line) -> str:
    return f' stroke-dasharray="{line.dash}"' if line.dash else ""


def _text(content: str, place: str, anchor: str = "middle") -> str:
    return f'<text {place} text-anchor="{anchor}">{html.escape(content)}</text>'


def _panel(panel: Panel, left: float, width: float, height: float) -> list[str]:
    """The SVG elements of ``panel`` in the box at ``left`` (plot area inside the margins)."""
    drawn = [(line, _finite(line)) for line in panel.lines]
    drawn = [(line, points) for line, points in drawn if points]
    x0, y0 = left + MARGIN["left"], MARGIN["top"]
    w, h = width - MARGIN["left"] - MARGIN["right"], height - MARGIN["top"] - MARGIN["bottom"]
    xs = [x for _, points in drawn for x, _ in points]
    ys = [y for _, points in drawn for _, y in points]
    log = panel.log and all(v > 0 for v in ys)
    ty = [math.log10(v) for v in ys] if log else ys
    (xa, xb), (ya, yb) = _limits(xs or [0.0]), _limits(ty or [0.0])

    def px(x: float) -> float:
        return x0 + (x - xa) / (xb - xa) * w

    def py(y: float) -> float:
        return y0 + h - ((math.log10(y) if log else y) - ya) / (yb - ya) * h

    out = [f"<!-- {html.escape(panel.title)} -->"]
    frame = f'x="{x0}" y="{y0}" width="{_number(w)}" height="{_number(h)}"'
    out.append(f'<rect {frame} fill="none" stroke="#222" stroke-width="1.5"/>')
    for tick in linear_ticks(xa, xb):
        x = _number(px(tick))
        out.append(f'<line x1="{x}" x2="{x}" y1="{y0}" y2="{_number(y0 + h)}" stroke="#ddd"/>')
        out.append(_text(_label(tick), f'x="{x}" y="{_number(y0 + h + 14)}"'))
    y_ticks = log_ticks(10**ya, 10**yb) if log else linear_ticks(ya, yb)
    for tick in y_ticks:
        y = _number(py(tick))
        out.append(f'<line x1="{x0}" x2="{_number(x0 + w)}" y1="{y}" y2="{y}" stroke="#ddd"/>')
        out.append(_text(_label(tick), f'x="{x0 - 4}" y="{y}" dy="0.35em"', anchor="end"))
    for line, points in drawn:
        path = " ".join(f"{_number(px(x))},{_number(py(y))}" for x, y in points)
        out.append(
            f'<polyline points="{path}" fill="none" stroke="{line.colour}" stroke-width="{line.width}"'
            f' stroke-opacity="{line.opacity}"{_dash(line)}/>'
        )
        if line.markers:
            out += [
                f'<circle cx="{_number(px(x))}" cy="{_number(py(y))}" r="2.5" fill="{line.colour}"/>'
                for x, y in points
            ]
    middle = _number(x0 + w / 2)
    if panel.title:
        out.append(_text(panel.title, f'x="{middle}" y="{y0 - 8}"'))
    if panel.xlabel:
        out.append(_text(panel.xlabel, f'x="{middle}" y="{_number(y0 + h + 32)}"'))
    if panel.ylabel:
        out.append(
            _text(panel.ylabel, f'transform="translate({left + 12},{_number(y0 + h / 2)}) rotate(-90)"')
        )
    return out


def chart(panels: Sequence[Panel], *, width: float = 720, height: float = 320) -> str:
    """An ``<svg>`` of ``panels`` side by side (``width`` in all, each ``height`` tall), then a legend of
    every labelled line, in rows under them."""
    if not panels:
        raise ValueError("a chart needs at least one panel")
    each = width / len(panels)
    body = [element for i, panel in enumerate(panels) for element in _panel(panel, i * each, each, height)]
    labelled = {line.label: line for panel in panels for line in panel.lines if line.label is not None}
    per_row = max(1, int(width // LEGEND_ITEM))
    for i, (label, line) in enumerate(labelled.items()):
        x, y = MARGIN["left"] + (i % per_row) * LEGEND_ITEM, height + (i // per_row) * LEGEND_ROW + 6
        swatch = f'x1="{x}" x2="{x + 24}" y1="{y}" y2="{y}"'
        body.append(f'<line {swatch} stroke="{line.colour}" stroke-width="2"{_dash(line)}/>')
        body.append(_text(label, f'x="{x + 30}" y="{y}" dy="0.35em"', anchor="start"))
    total = height + math.ceil(len(labelled) / per_row) * LEGEND_ROW
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {_number(width)} {total}" '
        f'width="{_number(width)}" height="{total}" {FONT}>' + STYLE + "".join(body) + "</svg>"
    )
