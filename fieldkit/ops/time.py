"""Switching fields by noise level."""

from __future__ import annotations

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.field import VelocityField
from fieldkit.ops.base import Operator


class TimeSwitch(Operator):
    """``v = v_high if sigma >= sigma0 else v_low`` per sample (``high`` governs the noisy end)."""

    def __init__(self, high: VelocityField, low: VelocityField, sigma0: float) -> None:
        super().__init__([high, low])
        if not 0.0 <= sigma0 <= 1.0:
            raise ValueError(f"time_switch sigma0 must lie in [0, 1], got {sigma0}")
        self.sigma0 = float(sigma0)

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        high_rows = sigma >= self.sigma0
        high, low = self.fields
        if bool(high_rows.all()):
            return high(x, sigma, cond)
        if not bool(high_rows.any()):
            return low(x, sigma, cond)
        out = torch.empty_like(x)
        for rows, field in ((high_rows, high), (~high_rows, low)):
            idx = rows.nonzero().squeeze(1)
            out[idx] = field(x[idx], sigma[idx], cond.index(idx))
        return out

    def extra_repr(self) -> str:
        return f"sigma0={self.sigma0}"
