"""Linear arithmetic on fields: a constant scale and a (weighted) sum."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.field import VelocityField
from fieldkit.ops.base import Operator, add_in_order


class Scale(Operator):
    """``v = c v_field``."""

    def __init__(self, field: VelocityField, c: float) -> None:
        super().__init__([field])
        self.c = float(c)

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        return self.c * self.fields[0](x, sigma, cond)

    def extra_repr(self) -> str:
        return f"c={self.c}"


class Sum(Operator):
    """``v = sum_i c_i v_i`` (all ``c_i = 1`` by default)."""

    def __init__(self, fields: Sequence[VelocityField], coefficients: Sequence[float] | None = None) -> None:
        super().__init__(fields)
        coefficients = [1.0] * len(fields) if coefficients is None else [float(c) for c in coefficients]
        if len(coefficients) != len(fields):
            raise ValueError(f"Sum got {len(fields)} fields but {len(coefficients)} coefficients")
        self.coefficients = coefficients

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        terms = [c * f(x, sigma, cond) for c, f in zip(self.coefficients, self.fields, strict=True)]
        return add_in_order(terms)

    def extra_repr(self) -> str:
        return f"coefficients={self.coefficients}"
