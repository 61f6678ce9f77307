"""Masked composition: one field inside a region, another outside (training-free local edits)."""

from __future__ import annotations

from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.field import VelocityField
from fieldkit.ops.base import Operator


class Masked(Operator):
    """``v = m v_inside + (1 - m) v_outside``, with ``m`` in [0, 1] fixed or read from ``cond[mask_key]``."""

    fixed_mask: Tensor | None  # a buffer

    def __init__(
        self,
        inside: VelocityField,
        outside: VelocityField,
        mask: Tensor | None = None,
        mask_key: str = "mask",
    ) -> None:
        super().__init__([inside, outside])
        self.mask_key = mask_key
        self.register_buffer("fixed_mask", mask, persistent=False)

    def _mask(self, x: Tensor, cond: Cond) -> Tensor:
        if self.fixed_mask is not None:
            return self.fixed_mask.to(x.dtype)
        if self.mask_key not in cond:
            raise FieldkitError(
                f"masked field needs cond[{self.mask_key!r}], but the Cond has {sorted(cond)}",
                hint="give the data bucket a mask, set mask_key, or pass a fixed mask",
            )
        return cond[self.mask_key].to(x.dtype)

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        m = self._mask(x, cond)
        inside, outside = self.fields
        return m * inside(x, sigma, cond) + (1 - m) * outside(x, sigma, cond)
