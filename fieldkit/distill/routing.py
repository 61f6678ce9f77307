"""Routers: which route's data an update draws, and which field supervises it.

Hard routing (DanceOPD) gives every sample exactly one field, the one bound to its data bucket. Soft routing
(the baseline) supervises every sample with the weighted average of all route fields.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fieldkit.field import VelocityField
from fieldkit.ops import Mix
from fieldkit.protocols import Route
from fieldkit.training_params import Granularity


class HardRouter:
    """Each update draws ONE route with ``P(m) = w_m / sum w`` (``G = 1``); ``granularity="sample"`` draws
    one per micro-batch, ``"all"`` visits every route in every update (``G = M``)."""

    def __init__(self, routes: Sequence[Route], granularity: Granularity = "update") -> None:
        if not routes:
            raise ValueError("a router needs at least one route")
        self.routes = list(routes)
        self.granularity = granularity
        weights = torch.tensor([r.weight for r in self.routes], dtype=torch.float64)
        self.probs = weights / weights.sum()

    def plan(self, micro_batches: int, generator: torch.Generator, step: int) -> list[int]:
        """The route index of each micro-batch of one optimizer update (the same at every ``step``)."""
        if self.granularity == "all":
            return [i % len(self.routes) for i in range(max(micro_batches, len(self.routes)))]
        draws = 1 if self.granularity == "update" else micro_batches
        picked: Tensor = torch.multinomial(self.probs, draws, replacement=True, generator=generator)
        return picked.tolist() * (micro_batches if draws == 1 else 1)

    def target(self, index: int) -> VelocityField | None:
        """The field that supervises samples drawn from route ``index``: that route's own field."""
        return self.routes[index].field


class SoftRouter(HardRouter):
    """Data is drawn as by :class:`HardRouter`, but every sample is supervised by
    ``mix(all route fields, route weights)``: the target-ambiguity baseline."""

    def __init__(self, routes: Sequence[Route], granularity: Granularity = "update") -> None:
        super().__init__(routes, granularity)
        fields = [r.field for r in self.routes if r.field is not None]
        if len(fields) != len(self.routes):
            raise ValueError("soft routing mixes every route's field; give every route a field")
        self.mixed = Mix(fields, [r.weight for r in self.routes])

    def target(self, index: int) -> VelocityField:
        return self.mixed
