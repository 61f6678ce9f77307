"""Which rollout states are queried: an index over the N pre-step states, biased toward low noise.

The index is ``i = min(floor(u N), N - 1)`` with ``u ~ Beta(a, b)`` (low: Beta(5, 2), mid: Beta(5, 5),
high: Beta(2, 5)); index 0 is pure noise and N - 1 the last pre-step state (the clean end is never queried).
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from fieldkit.training_params import Bias

BETA: dict[str, tuple[float, float]] = {"low": (5.0, 2.0), "mid": (5.0, 5.0), "high": (2.0, 5.0)}


@lru_cache(maxsize=64)
def index_probabilities(steps: int, a: float, b: float, grid: int = 4096) -> Tensor:
    """``P(i) = P(i / N <= u < (i + 1) / N)`` for ``u ~ Beta(a, b)``, by integrating the density per bin."""
    x = (torch.arange(steps * grid, dtype=torch.float64) + 0.5) / (steps * grid)
    log_density = (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x)
    density = torch.exp(log_density - log_density.max())
    mass = density.reshape(steps, grid).sum(1)
    return mass / mass.sum()


def sample_indices(
    steps: int, batch: int, k: int, bias: Bias, generator: torch.Generator, *, start: int = 0
) -> Tensor:
    """``[batch, k]`` query indices in ``[start, steps - 1]`` (``bias="all"``: every index, ``k`` ignored).

    ``start > 0`` (partial rollouts) draws from the bias's distribution conditioned on ``i >= start``:
    ``P(i | i >= start)`` for the Beta biases, uniform over the remaining indices, strata over them.
    """
    if steps < 1 or batch < 1 or k < 1:
        raise ValueError(f"need steps, batch and k >= 1, got {steps}, {batch}, {k}")
    if not 0 <= start < steps:
        raise ValueError(f"start must lie in [0, {steps - 1}], got {start}")
    left = steps - start
    if bias == "all":
        return torch.arange(start, steps).expand(batch, left).clone()
    if bias == "uniform":
        return torch.randint(start, steps, (batch, k), generator=generator)
    if bias == "stratified":
        u = (torch.arange(k) + torch.rand((batch, k), generator=generator, dtype=torch.float64)) / k
        return start + (u * left).long().clamp_max(left - 1)
    probs = index_probabilities(steps, *BETA[bias])[start:]
    return start + torch.multinomial(probs.expand(batch, left), k, replacement=True, generator=generator)
