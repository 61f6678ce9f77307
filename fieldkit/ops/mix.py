"""Soft averaging of fields: the soft-routing baseline that DanceOPD's hard routing replaces."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.field import VelocityField, broadcast_sigma
from fieldkit.ops.base import Operator, add_in_order


@dataclass(frozen=True)
class SigmaWeight:
    """A weight linear in sigma: ``w(sigma) = sigma * at_noise + (1 - sigma) * at_data``."""

    at_noise: float
    at_data: float

    def __call__(self, sigma: Tensor) -> Tensor:
        return sigma * self.at_noise + (1 - sigma) * self.at_data


Weight = float | SigmaWeight


class Mix(Operator):
    """``v = sum_i w_i(sigma) v_i / sum_i w_i(sigma)``: a weighted average, weights may depend on sigma."""

    def __init__(self, fields: Sequence[VelocityField], weights: Sequence[Weight] | None = None) -> None:
        super().__init__(fields)
        weights = [1.0] * len(fields) if weights is None else list(weights)
        if len(weights) != len(fields):
            raise ValueError(f"Mix got {len(fields)} fields but {len(weights)} weights")
        for w in weights:
            low = min(w.at_noise, w.at_data) if isinstance(w, SigmaWeight) else w
            if low < 0:
                raise ValueError(f"Mix weights must be >= 0, got {w}")
        self.weights = weights

    def _weights(self, sigma: Tensor) -> Tensor:
        """``[M, B]`` weights normalised to sum to one per sample."""
        rows = [w(sigma) if isinstance(w, SigmaWeight) else torch.full_like(sigma, w) for w in self.weights]
        stacked = torch.stack(rows)
        total = stacked.sum(0)
        if bool((total <= 0).any()):
            raise ValueError("Mix weights sum to zero at some sigma; give at least one positive weight")
        return stacked / total

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        weights = self._weights(sigma.to(x.dtype))
        terms = [broadcast_sigma(w, x) * f(x, sigma, cond) for w, f in zip(weights, self.fields, strict=True)]
        return add_in_order(terms)

    def extra_repr(self) -> str:
        return f"weights={self.weights}"
