"""Classifier-free guidance as an operator field."""

from __future__ import annotations

import torch
from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.field import VelocityField, uncond_of
from fieldkit.ops.base import Operator


def cond_and_uncond(field: VelocityField, x: Tensor, sigma: Tensor, cond: Cond) -> tuple[Tensor, Tensor]:
    """``(v_c, v_u)``: ``field`` at ``cond`` and at its unconditional counterpart, in ONE batched call on
    ``[x, x]`` (``sigma`` ``[B]``)."""
    both = Cond.cat([cond, uncond_of(field, cond)])
    v_c, v_u = field(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
    return v_c, v_u


class Guidance(Operator):
    """``v = v_u + w (v_c - v_u)``, with cond and uncond evaluated in ONE batched forward of ``field``.

    ``w = 1`` is the plain conditional field (and then the field is called once, on the plain batch).
    """

    def __init__(self, field: VelocityField, w: float) -> None:
        super().__init__([field])
        self.w = float(w)

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        field = self.fields[0]
        if self.w == 1.0:
            return field(x, sigma, cond)
        v_c, v_u = cond_and_uncond(field, x, sigma, cond)
        return v_u + self.w * (v_c - v_u)

    def extra_repr(self) -> str:
        return f"w={self.w}"
