"""Score fields on routes with their metrics, and show the results as one table on the console."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from rich.table import Table
from torch import Tensor

from fieldkit.data import evaluation_bucket
from fieldkit.errors import FieldkitError, PluginError
from fieldkit.eval.results import Results, Score, column_header, combined_scores, layout
from fieldkit.field import VelocityField
from fieldkit.flow import generate
from fieldkit.plugin_outputs import check_metric_values
from fieldkit.plugins.exits import exit_is_error
from fieldkit.protocols import Route

__all__ = ["Score", "combined_scores", "evaluate", "results_table"]


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
        with exit_is_error(f"routes.{route.name}.data", f"when {samples} samples were drawn for evaluation"):
            batch = bucket.sample(samples, torch.Generator().manual_seed(seed))
        for name, field in fields.items():
            noise_gen = torch.Generator().manual_seed(seed + 1)
            with exit_is_error(f"field {name!r}", f"while it generated samples of route {route.name!r}"):
                out = generate(field, batch.cond, tuple(route.data.shape), sigmas, noise_gen, device).cpu()
            values: dict[str, float] = {}
            for i, metric in enumerate(route.metrics):
                who = f"routes.{route.name}.metrics.{i}"
                try:
                    with exit_is_error(who, f"on {samples} samples of field {name!r}"):
                        result = metric(out, batch)
                except FieldkitError:
                    raise
                except Exception as exc:  # a plugin's metric: an error naming it, not an unexpected one
                    raise PluginError(
                        f"{who}: failed on {samples} samples of field {name!r}: {type(exc).__name__}: {exc}",
                        hint="a metric takes samples [B, *shape] and the batch they were drawn for; a run's "
                        "checkpoint is kept: fix the graph and rerun with --resume latest to evaluate again",
                    ) from exc
                values.update(check_metric_values(result, who))
            scores.append(Score(name, route.name, values))
    return scores


def results_table(results: Results, title: str = "results") -> Table:
    """The results table (:func:`fieldkit.eval.results.layout`) for the console: rows ``route: metric``
    with units and the better direction, the student / route teacher rows with pass or FAIL, combined;
    columns: fields (teachers with the routes they serve, then the student)."""
    table_layout = layout([("", results)])
    table = Table(title=title, caption=table_layout.caption, caption_justify="left")
    table.add_column("route: metric")
    for column in table_layout.columns:
        table.add_column(column_header(column), justify="right")
    for row in table_layout.rows:
        cells = [
            f"[green]{c}[/]" if c.endswith(" pass") else f"[bold red]{c}[/]" if c.endswith(" FAIL") else c
            for c in row.cells
        ]
        table.add_row(row.label, *cells, style=None if row.kind == "metric" else "bold")
    return table
