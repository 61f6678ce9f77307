"""What ``sample`` and ``eval`` compare: named fields of a graph and model folders, on the graph's routes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from fieldkit.errors import FieldkitError
from fieldkit.field import VelocityField
from fieldkit.graph.builder import BuildContext
from fieldkit.graph.loader import Graph


def collect_fields(
    graph: Graph, ctx: BuildContext, names: Sequence[str], checkpoints: Sequence[Path]
) -> dict[str, VelocityField]:
    """``{label: field}`` for graph nodes ``names`` and model folders ``checkpoints`` (loaded, frozen).

    Model folders are loaded in float32, the dtype fields are sampled in, whatever dtype they were saved
    in (a student saved in float16 or bfloat16 would otherwise meet float32 states).
    """
    from fieldkit.models import load_pretrained

    fields: dict[str, VelocityField] = {}
    for name in names:
        if name not in graph.nodes:
            raise FieldkitError(
                f"no field {name!r} in {graph.source.path}", hint=f"known fields: {', '.join(graph.nodes)}"
            )
        fields[name] = ctx.field(name)
    for folder in checkpoints:
        fields[folder.name if folder.name != "student" else str(folder)] = (
            load_pretrained(folder, dtype=torch.float32).to(ctx.device).freeze()
        )
    return fields


def sampling_sigmas(
    graph: Graph,
    fields: dict[str, VelocityField],
    shape: tuple[int, ...],
    route_field: VelocityField | None = None,
) -> torch.Tensor:
    """The sigmas every compared field samples with: the graph's ``flow.schedule`` (as training rolls out),
    read where the schedule asks for it from the route's own field (an operator's: from the fields it is built
    from), else from the first compared field that has a scheduler (the fields compared share one grid, so
    that they differ only in their velocities)."""
    from fieldkit.flow import own_sigmas, rollout_sigmas

    flow = graph.spec.flow
    candidates = [f for f in (route_field, *fields.values()) if f is not None]
    source = next((f for f in candidates if own_sigmas(f, flow.steps, shape) is not None), candidates[0])
    return rollout_sigmas(flow.schedule, flow.steps, flow.shift, source, shape)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
