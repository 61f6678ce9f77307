"""The training types of fieldkit-plugin-tempered (they need torch, so registration imports this module only
when a graph is built)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fieldkit.plugin_api import (
    Batch,
    Cond,
    FieldkitError,
    LossInputs,
    LossOutput,
    Route,
    VelocityField,
    interpolate,
)

# -- a router --------------------------------------------------------------------------------------------


class TemperedRouter:
    """Each update draws one route with ``P(m) = w_m^(1/T) / sum_j w_j^(1/T)``: ``T = 1`` follows the
    weights, a large ``T`` tends to uniform, a small one to the heaviest route. The drawn route's own field
    supervises it (hard routing)."""

    def __init__(self, routes: Sequence[Route], temperature: float) -> None:
        self._routes = list(routes)
        weights = torch.tensor([r.weight for r in self._routes], dtype=torch.float64)
        self.probs = torch.softmax(weights.log() / temperature, dim=0)

    @property
    def routes(self) -> Sequence[Route]:
        return self._routes

    def plan(self, micro_batches: int, generator: torch.Generator, step: int) -> list[int]:
        index = int(torch.multinomial(self.probs, 1, generator=generator))
        return [index] * micro_batches

    def target(self, index: int) -> VelocityField | None:
        return self._routes[index].field


# -- a data bucket ---------------------------------------------------------------------------------------


def levels(classes: int) -> Tensor:
    """The grey level of each label: ``classes`` values evenly spaced in [-1, 1]."""
    return torch.linspace(-1.0, 1.0, classes)


class LevelsBucket:
    """Flat images: label ``k`` asks for the image whose every pixel is ``levels(classes)[k]``. The Cond
    carries ``label`` (null: -1) and the image itself as ``source``; the target ``x0`` is that image."""

    def __init__(self, classes: int, shape: Sequence[int]) -> None:
        self.classes = classes
        self._shape = tuple(shape)

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        label = torch.randint(self.classes, (batch_size,), generator=generator)
        level = levels(self.classes)[label].view(-1, *[1] * len(self._shape))
        image = level.expand(batch_size, *self._shape).clone()
        cond = Cond({"label": label, "source": image}, nulls={"label": torch.tensor([-1])})
        return Batch(cond, target=image)


# -- a metric --------------------------------------------------------------------------------------------


class LevelError:
    """``level_error = mean_i |mean pixel of sample i - level of its label|``; ``score = 1 - level_error / 2``
    (1: every sample at its level; levels lie in [-1, 1], so the error is at most 2)."""

    def __init__(self, classes: int) -> None:
        self.classes = classes

    def __call__(self, samples: Tensor, batch: Batch) -> dict[str, float]:
        wanted = levels(self.classes)[batch.cond["label"].long().cpu()]
        error = (samples.float().cpu().flatten(1).mean(1) - wanted).abs().mean()
        return {"level_error": float(error), "score": float(1 - error / 2)}


# -- a method --------------------------------------------------------------------------------------------


class StraightPathMethod:
    """``L = E || v_student(x_s, s, c) - v_route(x_s, s, c) ||^2`` at ``x_s = (1 - s) x0 + s eps`` with
    ``s ~ U(0, 1)`` and ``x0`` the bucket's targets: distillation on the data's straight paths."""

    def rollout_steps(self, default: int) -> int:
        return default

    def loss(self, inputs: LossInputs) -> LossOutput:
        field, x0 = inputs.target, inputs.batch.target
        if field is None or x0 is None:
            raise FieldkitError("tempered.straight needs a route field and a bucket with targets")
        # Randomness for the global batch on every process, then this process's rows (see LossInputs).
        n = x0.shape[0]
        sigma = torch.rand(n, generator=inputs.generator)
        eps = torch.randn(x0.shape, generator=inputs.generator)
        rows, batch = inputs.shard.rows(n), inputs.shard.take(inputs.batch)
        device = inputs.sigmas.device
        cond, sigma = batch.cond.to(device), sigma[rows].to(device)
        x = interpolate(x0[rows].to(device), eps[rows].to(device), sigma)
        with torch.no_grad():
            u = field(x, sigma, cond)
        loss = (inputs.student(x, sigma, cond).float() - u.float()).pow(2).mean()
        return LossOutput(loss, query_sigmas=sigma)
