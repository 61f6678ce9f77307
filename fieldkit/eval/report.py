"""Score fields on routes with their metrics, and show the results as one table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import Tensor

from fieldkit.data import evaluation_bucket
from fieldkit.field import VelocityField
from fieldkit.flow import generate
from fieldkit.protocols import Route


@dataclass(frozen=True)
class Score:
    """One cell group of the results table: a field's metrics on a route."""

    field: str
    route: str
    values: dict[str, float]


def evaluate(
    fields: Mapping[str, VelocityField],
    routes: Sequence[Route],
    sigmas: Tensor,
    samples: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[Score]:
    """Every field on every route that has metrics (``route.metrics``): the same conditions and noise for
    every field.

    Conditions come from each route's evaluation bucket (:func:`~fieldkit.data.evaluation_bucket`).
    """
    scores = []
    for route in routes:
        if not route.metrics:
            continue
        bucket = evaluation_bucket(route.data)
        batch = bucket.sample(samples, torch.Generator().manual_seed(seed))
        for name, field in fields.items():
            noise_gen = torch.Generator().manual_seed(seed + 1)
            out = generate(field, batch.cond, tuple(route.data.shape), sigmas, noise_gen, device).cpu()
            values: dict[str, float] = {}
            for metric in route.metrics:
                values.update(metric(out, batch))
            scores.append(Score(name, route.name, values))
    return scores


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


def results_table(scores: Sequence[Score], title: str = "results") -> Table:
    """Rows: ``route/metric`` (and ``combined``, :func:`combined_scores`, when more than one route reports a
    ``score``); columns: fields. Fields are few and metrics many, so this keeps the table narrow."""
    metrics = list(dict.fromkeys(f"{s.route}/{k}" for s in scores for k in s.values))
    fields: dict[str, dict[str, float]] = {}
    for s in scores:
        fields.setdefault(s.field, {}).update({f"{s.route}/{k}": v for k, v in s.values.items()})
    if len({s.route for s in scores if "score" in s.values}) > 1:
        metrics.append("combined")
        for name, value in combined_scores(scores).items():
            fields[name]["combined"] = value
    table = Table(title=title)
    table.add_column("route/metric")
    for name in fields:
        table.add_column(name, justify="right")
    for metric in metrics:
        cells = (f"{values[metric]:.4g}" if metric in values else "-" for values in fields.values())
        table.add_row(metric, *cells, style="bold" if metric == "combined" else None)
    return table
