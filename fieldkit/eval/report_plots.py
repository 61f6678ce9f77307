"""The report's plots (inline SVG, :mod:`fieldkit.eval.svg_chart`): every route's loss on one axis, smoothed,
with the raw curve faint behind it; and the training metrics that change (a constant learning rate gets a
sentence, not a panel). And a study's cost-quality plot (a PNG made with matplotlib): scores against
training cost, one line per method, the mean over seeds with its 95% interval shaded (:func:`seed_band`,
:func:`band_plot`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldkit.eval.svg_chart import DASHES, PALETTE, Line, Panel, chart

TRAINING_KEYS = ("lr", "grad_norm")
LINE_STYLES = ("-", "--", ":", "-.")  # matplotlib's, for the study's PNG


def series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``key`` over the finite records that hold a finite number for it."""
    points = [
        (int(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(float(r[key])) and r.get("finite", True)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def route_loss(records: Sequence[dict[str, Any]], route: str) -> tuple[list[int], list[float]]:
    """A route's loss over steps: ``loss/ROUTE``, else the loss of updates routed to it alone."""
    steps, values = series(records, f"loss/{route}")
    if steps:
        return steps, values
    return series([r for r in records if r.get("route") == route], "loss")


def smooth(values: Sequence[float], span: int) -> list[float]:
    """Exponential moving average, bias-corrected: ``m_t = a x_t + (1 - a) m_{t-1}``, ``a = 2 / (span + 1)``,
    shown as ``m_t / (1 - (1 - a)^t)`` so the first points are not pulled toward 0."""
    a, m, out = 2.0 / (span + 1), 0.0, []
    for t, x in enumerate(values, 1):
        m = a * x + (1 - a) * m
        out.append(m / (1 - (1 - a) ** t))
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_plot(runs: Sequence[tuple[str, Sequence[dict[str, Any]], Sequence[str]]]) -> str:
    """Inline SVG: the loss of every route of every ``(run name, metrics records, routes)`` on one log axis
    (linear if a loss is not positive); a colour per route, a dash pattern per run; the smoothed curve over
    the faint raw one, its points marked when fewer than 20 were logged."""
    routes = list(dict.fromkeys(route for _, _, rs in runs for route in rs))
    curves = [(name, route, *route_loss(records, route)) for name, records, rs in runs for route in rs]
    curves = [c for c in curves if c[2]]
    if not curves:
        return "<p>No loss was logged.</p>"
    names = list(dict.fromkeys(name for name, *_ in curves))
    lines = []
    for name, route, steps, values in curves:
        colour = PALETTE[routes.index(route) % len(PALETTE)]
        dash = DASHES[names.index(name) % len(DASHES)]
        label = f"{name}: {route}" if len(names) > 1 else route
        smoothed = smooth(values, max(1, len(values) // 15))
        lines += [
            Line(steps, values, colour, dash, width=0.8, opacity=0.25),
            Line(steps, smoothed, colour, dash, markers=len(steps) < 20, label=label),
        ]
    return chart([Panel(lines, xlabel="step", ylabel="loss", log=True)], width=720, height=320)


def constant(values: Sequence[float]) -> bool:
    """Whether every value equals the first (to float precision)."""
    return all(math.isclose(v, values[0], rel_tol=1e-9, abs_tol=0.0) for v in values)


def training_plot(runs: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> tuple[str, list[str]]:
    """Inline SVG panels of the training metrics that change over the run (the gradient norm on a log axis),
    a dash pattern per run, and one sentence per metric that stayed constant (``lr 0.001 throughout``)."""
    panels: list[Panel] = []
    notes: list[str] = []
    for key in TRAINING_KEYS:
        lines = [(name, *series(records, key)) for name, records in runs]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        if all(constant(values) for _, _, values in lines):
            values = sorted({values[0] for _, _, values in lines})
            notes.append(f"{key} {' / '.join(f'{v:g}' for v in values)} throughout")
            continue
        drawn = [
            Line(
                steps,
                values,
                PALETTE[0],
                DASHES[i % len(DASHES)],
                width=1.2,
                label=name if len(runs) > 1 else None,
            )
            for i, (name, steps, values) in enumerate(lines)
        ]
        panels.append(Panel(drawn, title=key, xlabel="step", log=key == "grad_norm"))
    if not panels:
        return "", notes
    return chart(panels, width=360 * len(panels), height=260), notes


@dataclass(frozen=True)
class Band:
    """One method's line: at each point the mean cost ``x`` and the mean score over seeds, and the score's 95%
    interval ``[low, high]`` (NaN below two seeds)."""

    label: str
    x: tuple[float, ...]
    mean: tuple[float, ...]
    low: tuple[float, ...]
    high: tuple[float, ...]


def seed_band(label: str, seeds: Sequence[Sequence[tuple[float, float]]]) -> Band:
    """The band of ``(cost, score)`` curves, one per seed, point ``i`` of every seed together (the seeds'
    curves mark the same fractions of training): ``mean +- t_{0.975, n-1} s / sqrt(n)`` over the ``n``
    seeds' scores, ``s`` their standard deviation; curves are cut to the shortest."""
    from fieldkit.eval.verdict import Paired

    if not seeds:
        raise ValueError(f"{label}: a band needs at least one seed's curve")
    points = min(len(curve) for curve in seeds)
    x, mean, low, high = [], [], [], []
    for i in range(points):
        scores = Paired(tuple(curve[i][1] for curve in seeds))  # the interval of a mean is a paired one's
        lo, hi = scores.interval()
        x.append(math.fsum(curve[i][0] for curve in seeds) / len(seeds))
        mean.append(scores.mean)
        low.append(lo)
        high.append(hi)
    return Band(label, tuple(x), tuple(mean), tuple(low), tuple(high))


def band_figure(panels: Mapping[str, Sequence[Band]], *, xlabel: str, title: str) -> Any:
    """A matplotlib figure: one panel per ``{score name: bands}`` (its y axis the score), one line per band
    with its interval shaded, each label in one colour across panels, the legend beside the panels."""
    plt = _pyplot()
    width = 3.8 * len(panels) + 1.8
    figure, axes = plt.subplots(1, len(panels), figsize=(width, 3.6), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    labels = list(dict.fromkeys(b.label for bands in panels.values() for b in bands))
    for ax, (name, bands) in zip(axes.flat, panels.items(), strict=True):
        for band in bands:
            index = labels.index(band.label)
            colour = colours[index % len(colours)]
            style = LINE_STYLES[index // len(colours) % len(LINE_STYLES)]
            ax.plot(
                band.x, band.mean, color=colour, linestyle=style, marker="o", markersize=3, label=band.label
            )
            if all(math.isfinite(v) for v in (*band.low, *band.high)):
                ax.fill_between(band.x, band.low, band.high, color=colour, alpha=0.18, linewidth=0)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_lines()}
    figure.legend(list(handles.values()), list(handles), loc="center right", fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0, 1 - 1.3 / width, 1))
    return figure


def band_plot(panels: Mapping[str, Sequence[Band]], path: Path, *, xlabel: str, title: str) -> Path:
    """:func:`band_figure` written to ``path`` as a PNG."""
    plt = _pyplot()
    figure = band_figure(panels, xlabel=xlabel, title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
