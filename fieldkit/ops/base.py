"""The base class of operators: a field that holds the fields it is built from."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from torch import Tensor, nn

from fieldkit.cond import Cond
from fieldkit.field import ModuleField, VelocityField, as_field, uncond_of


class Operator(ModuleField):
    """A field built from other fields (``self.fields``); moving or freezing it moves or freezes them."""

    def __init__(self, fields: Sequence[VelocityField]) -> None:
        super().__init__()
        if not fields:
            raise ValueError(f"{type(self).__name__} needs at least one field")
        # Every child is a ModuleField (as_field wraps plain callables): the cast types the list as such.
        self.fields = cast("Sequence[ModuleField]", nn.ModuleList(as_field(f) for f in fields))

    def uncond(self, cond: Cond) -> Cond:
        """The children's unconditional counterparts, applied in turn (so guidance over an operator works)."""
        for field in self.fields:
            cond = uncond_of(field, cond)
        return cond


def add_in_order(terms: Sequence[Tensor]) -> Tensor:
    """``((t_0 + t_1) + t_2) + ...``: the terms summed left to right (the same rounding on every call)."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
