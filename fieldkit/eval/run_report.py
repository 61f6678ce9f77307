"""One self-contained HTML page for a run, or a comparison of runs (``fieldkit report``).

For every run folder the page says first whether the student passed (the results table of
:mod:`fieldkit.eval.results`, from ``results.json``) and which weights were evaluated (the EMA or the online
weights), then shows a picture of the field graph, every route's loss on one axis (smoothed over the faint
raw curve), the training metrics that change, each route's sample grids over the training steps (a step
slider; the PNG shows its row names and captions), and the graph itself. A comparison adds a table of the
settings that differ and puts the runs' grids side by side. Images and plots are embedded, so the page needs
no other file and no network; it reads on a phone-width screen too.
"""

from __future__ import annotations

import base64
import html
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from PIL import Image

from fieldkit.atomic import atomic_write
from fieldkit.distill.trackers import flat_hparams
from fieldkit.errors import FieldkitError
from fieldkit.eval.graph_svg import graph_svg
from fieldkit.eval.report_plots import loss_plot, training_plot
from fieldkit.eval.results import DEFAULT_BAR, Results, column_header, layout
from fieldkit.files import MiB, check_regular, read_text

GRID_NAME = re.compile(r"^step-(\d+)-(.+)\.png$")


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
    history: list[Grid]

    @property
    def routes(self) -> list[str]:
        """Route names, in the graph's order (then any others the metrics name)."""
        named = list(self.graph.get("routes", {}))
        logged = [k.split("/", 1)[1] for r in self.metrics for k in r if k.startswith("loss/")]
        return list(dict.fromkeys([*named, *logged]))

    @property
    def grids(self) -> list[Grid]:
        """The newest grid of each route, in the graph's route order."""
        newest = {g.route: g for g in sorted(self.history, key=lambda g: g.step)}
        return [newest[r] for r in [*self.routes, *newest] if r in newest][: len(newest)]

    def grids_of(self, route: str) -> list[Grid]:
        """Every grid of ``route``, oldest first."""
        return sorted((g for g in self.history if g.route == route), key=lambda g: g.step)

    @property
    def evaluated_weights(self) -> str:
        """Which weights the run evaluated, sampled and exported: its EMA or the online weights."""
        ema = (self.graph.get("student") or {}).get("ema")
        if ema:
            return f"an EMA of the student's weights (decay {ema}), not the last update's weights"
        return "the student's weights after the last update (no EMA: student.ema is off)"


MAX_FILE = 256 * MiB  # graph.json, metrics.jsonl, results.json, a grid PNG: far above what a run writes


def _read_json(path: Path, kinds: tuple[type, ...] = (dict,)) -> Any:
    """The JSON in the regular file ``path``, which must be one of ``kinds`` (by default an object)."""
    try:
        value = json.loads(read_text(path, MAX_FILE, path.name))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise FieldkitError(f"{path}: cannot read it: {exc}", hint="is this a complete run folder?") from None
    if not isinstance(value, kinds):
        raise FieldkitError(
            f"{path}: not what a run writes there (a JSON {type(value).__name__}, not an object)",
            hint="the file was damaged; remove it or write the run again",
        )
    return value


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(read_text(path, MAX_FILE, "metrics log").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
            raise FieldkitError(f"{path}:{number}: not a metrics record", hint="the file was damaged")
        records.append(record)
    return records


def _grids(samples: Path) -> list[Grid]:
    """Every sample grid of a run (``samples/step-STEP-ROUTE.png`` and the labels written beside it)."""
    grids = []
    for png in sorted(samples.glob("step-*.png")) if samples.is_dir() else []:
        match = GRID_NAME.match(png.name)
        if match is None:
            continue
        _check_png(png)
        labels = png.with_suffix(".json")
        data = _read_json(labels) if labels.is_file() else {}
        if not all(isinstance(data.get(key, []), list) for key in ("rows", "captions")):
            raise FieldkitError(
                f"{labels}: not the labels of a sample grid", hint="remove it, or sample again"
            )
        grids.append(
            Grid(match[2], int(match[1]), png, list(data.get("rows", [])), list(data.get("captions", [])))
        )
    return grids


def _read_results(path: Path) -> Results:
    """``results.json``: the object a run writes, or the bare list of rows older runs wrote."""
    data = _read_json(path, (dict, list))
    rows = data if isinstance(data, list) else data.get("rows", [])
    if not isinstance(rows, list):
        raise FieldkitError(f"{path}: its rows are not a list", hint="the file was damaged; evaluate again")
    for number, row in enumerate(rows, 1):
        if not (
            isinstance(row, dict) and isinstance(row.get("field"), str) and isinstance(row.get("route"), str)
        ):
            raise FieldkitError(
                f"{path}: row {number} names no field and route", hint="the file was damaged; evaluate again"
            )
    try:
        return Results.from_json(data)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise FieldkitError(f"{path}: not the results a run writes ({exc})", hint="evaluate again") from None


def _check_png(png: Path) -> None:
    """Refuse a grid that is not a regular file of at most MAX_FILE bytes holding a readable PNG."""
    check_regular(png, "sample grid")
    if png.stat().st_size > MAX_FILE:
        raise FieldkitError(f"{png}: the sample grid is larger than {MAX_FILE:,} bytes", hint="remove it")
    try:
        with warnings.catch_warnings():  # past PIL's decompression-bomb bound: refused, not warned about
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(png) as image:
                if image.format != "PNG":
                    raise ValueError("not a PNG")
                image.verify()
    except Exception as exc:  # PIL raises many types for damaged files: each one is a damaged grid
        raise FieldkitError(f"{png}: not a readable PNG ({exc})", hint="remove it, or sample again") from None


def read_run(folder: Path, name: str | None = None) -> RunFolder:
    """Read a run folder (``graph.json``, ``metrics.jsonl``, ``results.json``, ``samples/``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FieldkitError(f"{folder}: no such folder", hint="give a run folder, e.g. runs/digits")
    if not (folder / "graph.json").is_file():
        raise FieldkitError(
            f"{folder}: not a run folder (no graph.json)",
            hint="give the folder a run wrote, e.g. runs/digits (the run.out of its graph)",
        )
    results_path = folder / "results.json"
    graph = _read_json(folder / "graph.json")
    results = _read_results(results_path) if results_path.is_file() else Results.from_json([])
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
        _grids(folder / "samples"),
    )


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


def _image(grid: Grid, hidden: bool) -> str:
    """One grid as an embedded PNG (a small grid at twice its size, unblurred); its labels in the alt text
    (the PNG shows them)."""
    data = base64.b64encode(grid.png.read_bytes()).decode("ascii")
    with Image.open(grid.png) as image:
        width = image.width * (2 if image.width < 400 else 1)
    alt = f"samples of route {grid.route} at step {grid.step}"
    if grid.rows:
        alt += f"; rows: {' / '.join(grid.rows)}"
    if grid.captions:
        alt += "; columns: " + ", ".join(
            f"{i} {c or '(empty prompt)'}" for i, c in enumerate(grid.captions, 1)
        )
    return (
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" width="{width}" '
        f'data-step="{grid.step}"{" hidden" if hidden else ""}>'
    )


def grids_html(grids: Sequence[Grid], title: str) -> str:
    """A figure of one route's grids over the training steps: the newest shown, a slider for the others."""
    if not grids:
        return f'<figure class="steps"><figcaption>{html.escape(title)}: no grid</figcaption></figure>'
    images = "".join(_image(g, i != len(grids) - 1) for i, g in enumerate(grids))
    slider = (
        f'<input type="range" min="0" max="{len(grids) - 1}" value="{len(grids) - 1}" '
        f'aria-label="training step of {html.escape(title)}">'
        if len(grids) > 1
        else ""
    )
    steps = ", ".join(str(g.step) for g in grids)
    return (
        f'<figure class="steps"><figcaption><b>{html.escape(title)}</b>, <span class="step">step '
        f"{grids[-1].step}</span> (grids at steps {steps}) {slider}</figcaption>{images}</figure>"
    )


def settings_diff(runs: Sequence[RunFolder]) -> str:
    """A table of the graph settings whose values differ between the runs (``-``: not set in that run)."""
    flat = [{k: str(v) for k, v in flat_hparams(run.graph).items()} for run in runs]
    keys = [k for k in dict.fromkeys(k for f in flat for k in f) if len({f.get(k) for f in flat}) > 1]
    if not keys:
        return "<p>The runs' graphs are identical.</p>"
    head = "".join(f"<th>{html.escape(run.name)}</th>" for run in runs)
    body = "".join(
        f"<tr><td>{html.escape(k)}</td>"
        + "".join(f"<td>{html.escape(f.get(k, '-'))}</td>" for f in flat)
        + "</tr>"
        for k in keys
    )
    head = f"<thead><tr><th>setting</th>{head}</tr></thead>"
    return f'<div class="scroll"><table>{head}<tbody>{body}</tbody></table></div>'


def _summary(run: RunFolder) -> str:
    """One line per run: how far it trained, whether the student passed, which weights were evaluated."""
    steps = run.metrics[-1].get("step") if run.metrics else 0
    planned = (run.graph.get("run") or {}).get("steps")
    verdicts = run.results.verdicts
    failed = [v.route for v in verdicts if not v.passed]
    if not verdicts:
        verdict = "no verdict (no route compares the student with a teacher's score)"
    elif failed:
        verdict = f'<span class="fail">FAIL</span> on {html.escape(", ".join(failed))}'
    else:
        verdict = '<span class="pass">pass</span> on every route'
    bar = f" at {run.results.bar:g}x the route teacher" if verdicts else ""
    return (
        f"<li><b>{html.escape(run.name)}</b>: step {steps} of {planned}; the student: {verdict}{bar}. "
        f"Evaluated, sampled and exported: {html.escape(run.evaluated_weights)}.</li>"
    )


STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 1em; max-width: 1200px; color: #222;
       line-height: 1.4; }
h1 { font-size: 1.4em; overflow-wrap: anywhere; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .9em; }
td, th { border: 1px solid #ccc; padding: .25em .5em; text-align: right; vertical-align: top; }
td:first-child, th:first-child { text-align: left; }
tr.verdict td, tr.combined td { font-weight: 600; }
.pass { color: #137333; } .fail { color: #c5221f; font-weight: 700; }
.caption { font-size: .85em; color: #555; }
figure { margin: 1em 0; max-width: 100%; }
figure img { image-rendering: pixelated; max-width: 100%; height: auto; display: block; }
figure img[hidden] { display: none; }
figcaption { font-size: .9em; margin-bottom: .3em; }
figcaption input { vertical-align: middle; width: 12em; max-width: 100%; }
.side { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; margin: 1em 0; }
.side figure { flex: 1 1 300px; margin: 0; }
.plot svg { max-width: 100%; height: auto; }
svg.graph { font-family: system-ui, sans-serif; font-size: 12px; }
svg.graph .head { font-weight: 600; fill: #555; } svg.graph .detail { fill: #555; font-size: 10px; }
pre { background: #f6f6f6; padding: .8em; overflow-x: auto; font-size: .8em; }
"""

SCRIPT = """
document.querySelectorAll("figure.steps").forEach(function (box) {
  var input = box.querySelector("input"), images = box.querySelectorAll("img");
  var label = box.querySelector(".step");
  if (!input) return;
  input.addEventListener("input", function () {
    images.forEach(function (img, i) { img.hidden = i !== Number(input.value); });
    label.textContent = "step " + images[Number(input.value)].dataset.step;
  });
});
"""


def report_html(runs: Sequence[RunFolder]) -> str:
    """The whole page for ``runs`` (one run, or a comparison)."""
    if not runs:
        raise FieldkitError("no run to report on", hint="give at least one run folder")
    title = runs[0].name if len(runs) == 1 else "comparison of " + ", ".join(r.name for r in runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>fieldkit report: {html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>fieldkit report: {html.escape(title)}</h1>",
        "<ul>" + "".join(_summary(run) for run in runs) + "</ul>",
        "<h2>Results</h2>",
        results_html(runs),
    ]
    if len(runs) > 1:
        parts += ["<h2>Settings that differ</h2>", settings_diff(runs)]
    parts.append("<h2>Field graph</h2>")
    pictures = dict.fromkeys(graph_svg(run.graph) for run in runs)
    parts += [f'<div class="scroll">{picture}</div>' for picture in pictures]
    parts += [
        "<h2>Loss per route</h2>",
        f'<div class="plot">{loss_plot([(run.name, run.metrics, run.routes) for run in runs])}</div>',
    ]
    panels, notes = training_plot([(run.name, run.metrics) for run in runs])
    if panels or notes:
        parts.append("<h2>Training metrics</h2>")
        parts += [f'<div class="plot">{panels}</div>'] if panels else []
        parts += [f"<p>{html.escape('; '.join(notes))}.</p>"] if notes else []
    parts.append("<h2>Samples</h2>")
    routes = list(dict.fromkeys(r for run in runs for r in run.routes if run.grids_of(r)))
    if not routes:
        parts.append("<p>No sample grids.</p>")
    for route in routes:
        if len(runs) == 1:
            parts.append(grids_html(runs[0].grids_of(route), f"route {route}"))
        else:
            figures = "".join(grids_html(run.grids_of(route), f"{run.name}: route {route}") for run in runs)
            parts.append(f'<div class="side">{figures}</div>')
    for run in runs:
        graph = html.escape(yaml.safe_dump(run.graph, sort_keys=False, default_flow_style=None, width=100))
        parts.append(
            f"<details><summary>Graph of {html.escape(run.name)} (YAML)</summary><pre>{graph}</pre></details>"
        )
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(folders: Sequence[Path], out: Path) -> Path:
    """Read the run ``folders`` and write their report to ``out`` (atomically); returns ``out``."""
    names = [Path(f).name for f in folders]
    unique = len(set(names)) == len(names)
    runs = [read_run(Path(f), None if unique else str(f)) for f in folders]
    return atomic_write(out, report_html(runs))
