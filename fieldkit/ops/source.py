"""The closed-form field that carries a state to the source image of an edit."""

from __future__ import annotations

from torch import Tensor

from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.field import ModuleField, broadcast_sigma


class TowardSource(ModuleField):
    """``v = (x - source) / sigma``: the straight path from ``x_sigma`` to ``cond[source_key]``.

    Safe at sigma -> 0: sigma is clamped to ``min_sigma``.

    An Euler step to ``sigma_next`` scales ``x - source`` by ``sigma_next / sigma``, so integrating from any
    ``x`` at sigma = 1 to sigma = 0 lands exactly on the source.
    """

    def __init__(self, source_key: str = "source", min_sigma: float = 1e-6) -> None:
        super().__init__()
        self.source_key = source_key
        self.min_sigma = min_sigma

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        if self.source_key not in cond:
            raise FieldkitError(
                f"toward_source needs cond[{self.source_key!r}], but the Cond has {sorted(cond)}",
                hint="route it to a data bucket that provides source images",
            )
        source = cond[self.source_key].to(x.dtype)
        s = broadcast_sigma(sigma, x).clamp_min(self.min_sigma)
        return (x - source) / s
