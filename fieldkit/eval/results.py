"""The results table: every field's metrics on every route, and whether the student did its job.

A route is served by one field of the graph (its teacher). The student passes a route when its ``score``
there is at least ``bar`` times the route teacher's score (``run.pass_ratio``, 0.95 by default), and passes
``combined`` when its mean score over the routes is at least ``bar`` times the route teachers' mean score,
each teacher on its own route. The one table is shown on the console, in report.html and in the model card,
and stored as ``results.json`` (:meth:`Results.to_json`). Nothing here imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_BAR = 0.95
STUDENT = "student"
COMBINED = "combined"

# What a metric's value means: its unit and which direction is better ("higher" or "lower"; a metric whose
# good value depends on the teacher, such as the mixture's spread, gets no mark).
# Metrics name their values; these are the names fieldkit and its plugins use.
HIGHER: frozenset[str] = frozenset(
    {"score", "accuracy", "identity", "position", "count", "success", "realism", "psnr"}
)
LOWER: frozenset[str] = frozenset({"fd", "level_error", "error", "loss"})
UNITS: Mapping[str, str] = {"psnr": "dB"}


def direction(metric: str) -> Literal["higher", "lower", ""]:
    """Which values of ``metric`` are better ("" when fieldkit does not know the metric)."""
    if metric in HIGHER:
        return "higher"
    if metric in LOWER or metric.endswith("_error"):
        return "lower"
    return ""


ARROWS: Mapping[str, str] = {"higher": "↑", "lower": "↓"}
LEGEND = "↑ higher is better, ↓ lower is better"


def metric_label(metric: str) -> str:
    """``psnr (dB) ↑``, ``fd ↓``; the bare name when fieldkit does not know the metric's direction."""
    unit = f" ({UNITS[metric]})" if metric in UNITS else ""
    arrow = ARROWS.get(direction(metric), "")
    return f"{metric}{unit}{' ' + arrow if arrow else ''}"


def number(value: float) -> str:
    """Every number of the table in one format: three decimals (``nan`` where a metric had no sample)."""
    return "nan" if math.isnan(value) else f"{value:.3f}"


@dataclass(frozen=True)
class Score:
    """One cell group of the results table: a field's metrics on a route."""

    field: str
    route: str
    values: dict[str, float]


@dataclass(frozen=True)
class Verdict:
    """The student against the teacher of one route (or ``combined``: against the route teachers' mean)."""

    route: str
    teacher: str
    student: float
    reference: float
    ratio: float
    passed: bool


def combined_scores(scores: Sequence[Score]) -> dict[str, float]:
    """Per field, the mean of its routes' ``score`` values, when every route that reports a ``score`` for
    some field reports one for this field too (one number to rank fields that serve several routes)."""
    routes = list(dict.fromkeys(s.route for s in scores if "score" in s.values))
    per_field: dict[str, dict[str, float]] = {}
    for s in scores:
        if "score" in s.values:
            per_field.setdefault(s.field, {})[s.route] = s.values["score"]
    return {
        name: sum(values[r] for r in routes) / len(routes)
        for name, values in per_field.items()
        if routes and all(r in values for r in routes)
    }


@dataclass(frozen=True)
class Results:
    """Scores of fields on routes, which field serves each route, and the bar the student must clear."""

    scores: list[Score]
    teachers: dict[str, str] = field(default_factory=dict)
    bar: float = DEFAULT_BAR

    @property
    def routes(self) -> list[str]:
        """The scored routes, in the order they were scored (the graph's)."""
        return list(dict.fromkeys(s.route for s in self.scores))

    def value(self, field_name: str, route: str, metric: str) -> float | None:
        """One cell: ``field_name``'s ``metric`` on ``route`` (None when not scored)."""
        for s in self.scores:
            if s.field == field_name and s.route == route and metric in s.values:
                return float(s.values[metric])
        return None

    @property
    def verdicts(self) -> list[Verdict]:
        """Student / route teacher on each route where both have a positive ``score``; then ``combined``:
        the student's mean score over those routes / the route teachers' mean score on their own routes
        (only when every route with a score has a verdict)."""
        out = []
        for route in self.routes:
            teacher = self.teachers.get(route)
            student = self.value(STUDENT, route, "score")
            reference = None if teacher is None else self.value(teacher, route, "score")
            if student is None or reference is None or not reference > 0 or math.isnan(student):
                continue
            ratio = student / reference
            out.append(Verdict(route, teacher or "", student, reference, ratio, ratio >= self.bar))
        scored = [r for r in self.routes if self.value(STUDENT, r, "score") is not None]
        if len(out) > 1 and len(out) == len(scored):
            student = sum(v.student for v in out) / len(out)
            reference = sum(v.reference for v in out) / len(out)
            ratio = student / reference
            out.append(Verdict(COMBINED, "", student, reference, ratio, ratio >= self.bar))
        return out

    @property
    def passed(self) -> bool | None:
        """Whether the student cleared the bar everywhere it was judged (None: nothing to judge)."""
        verdicts = self.verdicts
        return all(v.passed for v in verdicts) if verdicts else None

    def to_json(self) -> dict[str, Any]:
        """What ``results.json`` holds: the bar, the route teachers, the verdicts and one row per field and
        route with its metric values (``rows``)."""
        return {
            "bar": self.bar,
            "passed": self.passed,
            "teachers": self.teachers,
            "verdicts": [vars(v) for v in self.verdicts],
            "combined": combined_scores(self.scores),
            "rows": [{"field": s.field, "route": s.route, **s.values} for s in self.scores],
        }

    @classmethod
    def from_json(cls, data: Any) -> Results:
        """Read :meth:`to_json`'s object, or the bare list of rows that older runs wrote."""
        rows = data if isinstance(data, list) else data.get("rows", [])
        scores = [
            Score(
                str(row["field"]),
                str(row["route"]),
                {k: float(v) for k, v in row.items() if k not in ("field", "route") and _is_number(v)},
            )
            for row in rows
        ]
        if isinstance(data, list):
            return cls(scores)
        return cls(scores, {str(k): str(v) for k, v in data.get("teachers", {}).items()}, data["bar"])


def route_teachers(routes: Mapping[str, Any]) -> dict[str, str]:
    """``{route: the field that serves it}`` from a graph's ``routes`` (a data-only route has none)."""
    return {name: str(route.field) for name, route in routes.items() if route.field is not None}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# -- the table, laid out once for the console, HTML and markdown ---------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of the table: a field of one run (teachers shared by runs are shown once)."""

    label: str
    run: int
    field: str
    serves: tuple[str, ...] = ()


@dataclass(frozen=True)
class Row:
    """One row: a label, one cell per column, and its kind (``metric``, ``verdict`` or ``combined``)."""

    label: str
    cells: list[str]
    kind: str = "metric"


@dataclass(frozen=True)
class Layout:
    """The table as text cells, with a caption that states the bar."""

    columns: list[Column]
    rows: list[Row]
    caption: str


def _columns(runs: Sequence[tuple[str, Results]]) -> list[Column]:
    columns: list[Column] = []
    shown: dict[tuple[str, tuple[tuple[str, tuple[tuple[str, float], ...]], ...]], int] = {}
    for index, (name, results) in enumerate(runs):
        fields = list(dict.fromkeys(s.field for s in results.scores))
        fields = [f for f in fields if f != STUDENT] + [f for f in fields if f == STUDENT]
        for f in fields:
            values = tuple((s.route, tuple(sorted(s.values.items()))) for s in results.scores if s.field == f)
            if f != STUDENT and (f, values) in shown:
                continue  # the same teacher with the same scores in an earlier run
            shown[(f, values)] = index
            serves = tuple(r for r, t in results.teachers.items() if t == f)
            label = f"{name}: {f}" if len(runs) > 1 and (f == STUDENT or index > 0) else f
            columns.append(Column(label, index, f, serves))
    return columns


def layout(runs: Sequence[tuple[str, Results]]) -> Layout:
    """Rows ``route metric`` (then the student / teacher row of the route), ``combined``; one column per
    field (the route teachers first, each with the routes it serves; one student column per run)."""
    columns = _columns(runs)
    results = [r for _, r in runs]
    routes = list(dict.fromkeys(route for r in results for route in r.routes))
    rows: list[Row] = []

    def cell(column: Column, route: str, metric: str) -> str:
        value = results[column.run].value(column.field, route, metric)
        return "-" if value is None else number(value)

    def verdict_cells(route: str) -> list[str] | None:
        cells, any_verdict = [], False
        for column in columns:
            found = [v for v in results[column.run].verdicts if v.route == route]
            if column.field == STUDENT and found:
                any_verdict = True
                cells.append(f"{found[0].ratio:.3f}x {'pass' if found[0].passed else 'FAIL'}")
            else:
                cells.append("")
        return cells if any_verdict else None

    for route in routes:
        metrics = list(
            dict.fromkeys(k for r in results for s in r.scores if s.route == route for k in s.values)
        )
        for metric in metrics:
            rows.append(Row(f"{route}: {metric_label(metric)}", [cell(c, route, metric) for c in columns]))
        teachers = {r.teachers[route] for r in results if route in r.teachers}
        if (cells := verdict_cells(route)) is not None:
            rows.append(Row(f"{route}: student / {' or '.join(sorted(teachers))}", cells, "verdict"))
    combined = [combined_scores(r.scores) for r in results]
    if (
        len([route for route in routes if any(r.value(STUDENT, route, "score") is not None for r in results)])
        > 1
    ):
        cells = [number(combined[c.run][c.field]) if c.field in combined[c.run] else "-" for c in columns]
        rows.append(Row(f"{COMBINED}: mean {metric_label('score')}", cells, COMBINED))
        if (cells := verdict_cells(COMBINED)) is not None:
            rows.append(Row(f"{COMBINED}: student / route teachers", cells, "verdict"))
    bars = sorted({r.bar for r in results})
    bar = " or ".join(f"{b:g}x" for b in bars)
    caption = (
        f"pass: the student's score is at least {bar} the score of the route's teacher (combined: of the "
        f"route teachers' mean, each on its own route); run.pass_ratio sets the bar. {LEGEND}"
    )
    return Layout(columns, rows, caption)


def column_header(column: Column) -> str:
    """A column's label and, for a teacher, the routes it serves."""
    return f"{column.label} (serves {', '.join(column.serves)})" if column.serves else column.label


def markdown(runs: Sequence[tuple[str, Results]]) -> str:
    """The table in markdown (the model card's)."""
    table = layout(runs)
    head = "| route: metric | " + " | ".join(column_header(c) for c in table.columns) + " |"
    rule = "|---|" + "---|" * len(table.columns)
    body = [
        f"| {'**' + row.label + '**' if row.kind != 'metric' else row.label} | "
        + " | ".join(row.cells)
        + " |"
        for row in table.rows
    ]
    return "\n".join([head, rule, *body, "", f"{table.caption}."])
