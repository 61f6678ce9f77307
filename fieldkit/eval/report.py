"""Score fields on routes with their metrics, and show the results as one table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import Tensor

from fieldkit.distill.routing import Route
from fieldkit.eval.metrics import Metric
from fieldkit.field import VelocityField
from fieldkit.flow import generate


@dataclass(frozen=True)
class Score:
    """One cell group of the results table: a field's metrics on a route."""

    field: str
    route: str
    values: dict[str, float]


def evaluate(
    fields: Mapping[str, VelocityField],
    routes: Sequence[Route],
    metrics: Mapping[str, Sequence[Metric]],
    sigmas: Tensor,
    samples: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
) -> list[Score]:
    """Every field on every route that has metrics: the same conditions and noise for every field."""
    scores = []
    for route in routes:
        route_metrics = metrics.get(route.name, ())
        if not route_metrics:
            continue
        batch = route.data.sample(samples, torch.Generator().manual_seed(seed))
        for name, field in fields.items():
            noise_gen = torch.Generator().manual_seed(seed + 1)
            out = generate(field, batch.cond, tuple(route.data.shape), sigmas, noise_gen, device).cpu()
            values: dict[str, float] = {}
            for metric in route_metrics:
                values.update(metric(out, batch))
            scores.append(Score(name, route.name, values))
    return scores


def results_table(scores: Sequence[Score], title: str = "results") -> Table:
    """Rows: fields; columns: ``route/metric``."""
    columns = list(dict.fromkeys(f"{s.route}/{k}" for s in scores for k in s.values))
    rows: dict[str, dict[str, float]] = {}
    for s in scores:
        rows.setdefault(s.field, {}).update({f"{s.route}/{k}": v for k, v in s.values.items()})
    table = Table(title=title)
    table.add_column("field")
    for column in columns:
        table.add_column(column, justify="right")
    for name, values in rows.items():
        table.add_row(name, *(f"{values[c]:.4g}" if c in values else "-" for c in columns))
    return table
