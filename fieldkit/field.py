"""The ``VelocityField`` protocol and a base class for fields backed by an ``nn.Module``.

Conventions (see docs/concepts.md): ``sigma`` in [0, 1] with 1 = noise;
``x_sigma = (1 - sigma) x0 + sigma eps``; a field returns the velocity ``v = eps - x0``, shaped like ``x``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from fieldkit.capabilities import HasUncond
from fieldkit.cond import Cond


@runtime_checkable
class VelocityField(Protocol):
    """Anything callable as ``field(x, sigma, cond) -> v`` with ``v.shape == x.shape``.

    ``x`` is ``[B, ...]``, ``sigma`` a float tensor ``[B]``, ``cond`` a :class:`~fieldkit.Cond` of batch B.
    """

    def __call__(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor: ...


class ModuleField(nn.Module):
    """A field whose velocity comes from a trainable or frozen ``nn.Module``.

    Subclasses implement :meth:`forward` ``(x, sigma, cond) -> v``. :meth:`freeze` turns the field into a
    frozen teacher: eval mode, no parameter requires grad.
    """

    if TYPE_CHECKING:  # nn.Module types its call as (...) -> Any; a field's call is forward's

        def __call__(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor: ...

    def freeze(self) -> ModuleField:
        """Make this field a frozen teacher (eval mode, no grads) and return it."""
        self.eval()
        self.requires_grad_(False)
        return self

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


def broadcast_sigma(sigma: Tensor, x: Tensor) -> Tensor:
    """Reshape ``sigma`` ``[B]`` to ``[B, 1, ..., 1]`` so it broadcasts against ``x``."""
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.to(dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))


class FunctionField(ModuleField):
    """Wraps a plain callable ``fn(x, sigma, cond) -> v`` so it composes like any other field."""

    def __init__(self, fn: VelocityField, name: str | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__name__", type(fn).__name__))

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        return self.fn(x, sigma, cond)

    def uncond(self, cond: Cond) -> Cond:
        """The wrapped callable's own ``uncond(cond)`` when it has one, else ``cond.uncond()``."""
        return uncond_of(self.fn, cond)

    def extra_repr(self) -> str:
        return self.name


def as_field(field: VelocityField) -> ModuleField:
    """``field`` itself when it is an ``nn.Module`` field, else wrapped in :class:`FunctionField`."""
    if isinstance(field, ModuleField):
        return field
    if not callable(field):
        raise TypeError(f"a field must be callable as field(x, sigma, cond), got {type(field).__name__}")
    return FunctionField(field)


def uncond_of(field: VelocityField, cond: Cond) -> Cond:
    """The unconditional Cond for ``field``: its own ``uncond(cond)`` if any, else ``cond.uncond()``."""
    return field.uncond(cond) if isinstance(field, HasUncond) else cond.uncond()
