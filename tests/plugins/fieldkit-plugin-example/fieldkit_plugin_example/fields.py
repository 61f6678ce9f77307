"""The fields of fieldkit-plugin-example (they need torch, so registration imports them only when a graph is
built)."""

from __future__ import annotations

from torch import Tensor

from fieldkit.plugin_api import Cond, ModuleField, Operator, broadcast_sigma


class ConstantField(ModuleField):
    """The exact velocity of the flow whose data is one constant image ``c``: ``v = (x - c) / sigma``.

    On the path ``x = (1 - sigma) c + sigma eps`` the velocity ``eps - c`` equals ``(x - c) / sigma``, so a
    single Euler step from pure noise (sigma = 1) to sigma = 0 lands exactly on ``c``.
    """

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        return (x - self.value) / broadcast_sigma(sigma, x).clamp_min(1e-6)


class Negate(Operator):
    """``v = -v_field``."""

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        return -self.fields[0](x, sigma, cond)
