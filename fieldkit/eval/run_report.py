"""One self-contained HTML page for a run, or a comparison of runs (``fieldkit report``).

The page holds, for every run folder: the loss of each route and the training metrics over steps (inline
SVG plots made with matplotlib), the results table (``results.json``), the newest sample grid of each route
with its row names and captions (``samples/*.png`` and the labels written beside them), and the graph
(``graph.json``). Images are embedded as base64 PNG, so the page needs no other file and no network.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from fieldkit.atomic import atomic_write
from fieldkit.errors import FieldkitError
from fieldkit.eval.results import DEFAULT_BAR, Results, column_header, layout

GRID_NAME = re.compile(r"^step-(\d+)-(.+)\.png$")
TRAINING_KEYS = ("lr", "grad_norm")


@dataclass(frozen=True)
class Grid:
    """A sample grid of one route: the PNG and its labels (row names, one caption per column)."""

    route: str
    step: int
    png: Path
    rows: list[str] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RunFolder:
    """What a run folder holds that the report shows."""

    name: str
    folder: Path
    graph: dict[str, Any]
    metrics: list[dict[str, Any]]
    results: Results
    grids: list[Grid]

    @property
    def routes(self) -> list[str]:
        """Route names, in the graph's order (then any others the metrics name)."""
        named = list(self.graph.get("routes", {}))
        logged = [k.split("/", 1)[1] for r in self.metrics for k in r if k.startswith("loss/")]
        return list(dict.fromkeys([*named, *logged]))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FieldkitError(f"{path}: cannot read it: {exc}", hint="is this a complete run folder?") from None


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise FieldkitError(f"{path}:{number}: not a JSON record", hint="the file was damaged") from None
    return records


def _newest_grids(samples: Path) -> list[Grid]:
    newest: dict[str, tuple[int, Path]] = {}
    for png in sorted(samples.glob("step-*.png")) if samples.is_dir() else []:
        match = GRID_NAME.match(png.name)
        if match and int(match[1]) >= newest.get(match[2], (-1, png))[0]:
            newest[match[2]] = (int(match[1]), png)
    grids = []
    for route, (step, png) in newest.items():
        labels = png.with_suffix(".json")
        data = _read_json(labels) if labels.is_file() else {}
        grids.append(Grid(route, step, png, list(data.get("rows", [])), list(data.get("captions", []))))
    return grids


def read_run(folder: Path, name: str | None = None) -> RunFolder:
    """Read a run folder (``graph.json``, ``metrics.jsonl``, ``results.json``, ``samples/``)."""
    folder = Path(folder)
    if not (folder / "graph.json").is_file():
        raise FieldkitError(
            f"{folder}: not a run folder (no graph.json)",
            hint="give the folder a run wrote, e.g. runs/digits (the run.out of its graph)",
        )
    results_path = folder / "results.json"
    graph = _read_json(folder / "graph.json")
    results = Results.from_json(_read_json(results_path) if results_path.is_file() else [])
    if not results.teachers:  # results.json of an older run: its rows only; the graph says the rest
        routes = graph.get("routes", {})
        teachers = {name: str(r["field"]) for name, r in routes.items() if r.get("field") is not None}
        bar = float(graph.get("run", {}).get("pass_ratio", DEFAULT_BAR))
        results = Results(results.scores, teachers, bar)
    return RunFolder(
        name or folder.name,
        folder,
        graph,
        _read_metrics(folder / "metrics.jsonl"),
        results,
        _newest_grids(folder / "samples"),
    )


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: the SVG is inlined in HTML


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    points = [
        (int(r["step"]), float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(float(r[key])) and r.get("finite", True)
    ]
    return [p[0] for p in points], [p[1] for p in points]


def _route_loss(run: RunFolder, route: str) -> tuple[list[int], list[float]]:
    """A route's loss over steps: ``loss/ROUTE``, else the loss of updates routed to it alone."""
    steps, values = _series(run.metrics, f"loss/{route}")
    if steps:
        return steps, values
    return _series([r for r in run.metrics if r.get("route") == route], "loss")


def loss_plot(runs: Sequence[RunFolder]) -> str:
    """Inline SVG: one panel per route, the loss over steps of every run (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routes = list(dict.fromkeys(r for run in runs for r in run.routes))
    keys = [*routes, *(k for k in TRAINING_KEYS if any(_series(run.metrics, k)[0] for run in runs))]
    if not keys:
        return "<p>No metrics were logged.</p>"
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        is_route = key in routes
        for run in runs:
            steps, values = _route_loss(run, key) if is_route else _series(run.metrics, key)
            if steps:
                few = len(steps) < 20  # a few logged points: mark them, or a single one would not show
                ax.plot(
                    steps, values, label=run.name, linewidth=1.2, marker="o" if few else None, markersize=3
                )
        ax.set_title(f"loss: route {key}" if is_route else key)
        ax.set_xlabel("step")
        positive = all(v > 0 for line in ax.get_lines() for v in line.get_ydata())
        if (is_route or key == "grad_norm") and positive and ax.get_lines():  # log needs positive values
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    figure.tight_layout()
    svg = _svg(figure)
    plt.close(figure)
    return svg


def results_html(runs: Sequence[RunFolder]) -> str:
    """The results table of every run (:func:`fieldkit.eval.results.layout`): one student column per run,
    teachers shared by the runs shown once, the student / route teacher rows marked pass or FAIL."""
    if not any(run.results.scores for run in runs):
        return "<p>No route has metrics, so there are no results (results.json is written only then).</p>"
    table = layout([(run.name, run.results) for run in runs])
    head = "".join(f"<th>{html.escape(column_header(c))}</th>" for c in table.columns)

    def cell(text: str) -> str:
        mark = " pass" if text.endswith(" pass") else " fail" if text.endswith(" FAIL") else ""
        return (
            f'<td class="{mark.strip()}">{html.escape(text)}</td>'
            if mark
            else f"<td>{html.escape(text)}</td>"
        )

    body = "".join(
        f'<tr class="{row.kind}"><td>{html.escape(row.label)}</td>{"".join(cell(c) for c in row.cells)}</tr>'
        for row in table.rows
    )
    return (
        f'<div class="scroll"><table><thead><tr><th>route: metric</th>{head}</tr></thead>'
        f'<tbody>{body}</tbody></table></div><p class="caption">{html.escape(table.caption)}.</p>'
    )


def grid_html(grid: Grid) -> str:
    """A figure: the grid as an embedded PNG, its row names and its numbered captions as text."""
    data = base64.b64encode(grid.png.read_bytes()).decode("ascii")
    with Image.open(grid.png) as image:  # a small grid is shown at twice its size, unblurred
        width = image.width * (2 if image.width < 400 else 1)
    rows = f"rows: {html.escape(' / '.join(grid.rows))}" if grid.rows else ""
    captions = "".join(f"<li>{html.escape(c) or '(empty prompt)'}</li>" for c in grid.captions)
    listing = f"<ol>{captions}</ol>" if captions else ""
    alt = html.escape(f"samples of route {grid.route} at step {grid.step}")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{alt}" width="{width}">'
        f"<figcaption><b>route {html.escape(grid.route)}</b>, step {grid.step}. {rows}{listing}"
        "</figcaption></figure>"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { image-rendering: pixelated; max-width: 100%; }
figcaption { font-size: .9em; } figcaption ol { margin: .3em 0; columns: 2; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .8em; }
.plot svg { max-width: 100%; height: auto; }
"""


def report_html(runs: Sequence[RunFolder]) -> str:
    """The whole page for ``runs`` (one run, or a comparison)."""
    if not runs:
        raise FieldkitError("no run to report on", hint="give at least one run folder")
    title = runs[0].name if len(runs) == 1 else "comparison of " + ", ".join(r.name for r in runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>fieldkit report: {html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>fieldkit report: {html.escape(title)}</h1>",
        "<ul>"
        + "".join(
            f"<li><b>{html.escape(r.name)}</b>: {len(r.metrics)} records in metrics.jsonl"
            f"{', last step ' + str(r.metrics[-1].get('step')) if r.metrics else ''}</li>"
            for r in runs
        )
        + "</ul>",
        "<h2>Loss per route and training metrics</h2>",
        f'<div class="plot">{loss_plot(runs)}</div>',
        "<h2>Results</h2>",
        results_html(runs),
    ]
    for run in runs:
        parts.append(f"<h2>Samples: {html.escape(run.name)}</h2>")
        parts.extend(grid_html(g) for g in run.grids) if run.grids else parts.append(
            "<p>No sample grids.</p>"
        )
    for run in runs:
        graph = html.escape(yaml.safe_dump(run.graph, sort_keys=False, default_flow_style=None, width=100))
        parts.append(f"<h2>Graph: {html.escape(run.name)}</h2><pre>{graph}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(folders: Sequence[Path], out: Path) -> Path:
    """Read the run ``folders`` and write their report to ``out`` (atomically); returns ``out``."""
    names = [Path(f).name for f in folders]
    unique = len(set(names)) == len(names)
    runs = [read_run(Path(f), None if unique else str(f)) for f in folders]
    return atomic_write(out, report_html(runs))
