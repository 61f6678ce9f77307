"""fieldkit-plugin-example: a source ``example.constant``, an operator ``example.negate`` and a command
``fieldkit example-hello``."""

from __future__ import annotations

import click
import torch
from pydantic import Field
from torch import Tensor

from fieldkit import Cond
from fieldkit.field import ModuleField, broadcast_sigma
from fieldkit.graph import BuildContext, FieldRef
from fieldkit.ops import Operator
from fieldkit.plugins import Params, hookimpl
from fieldkit.protocols import Register


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


class ConstantParams(Params):
    value: float = Field(0.0, description="the pixel value of the constant image the flow carries noise to")


class NegateParams(Params):
    field: FieldRef = Field(description="the field to negate")


def build_constant(params: ConstantParams, ctx: BuildContext) -> ConstantField:
    """The flow that carries noise to a constant image."""
    return ConstantField(params.value)


def build_negate(params: NegateParams, ctx: BuildContext) -> Negate:
    """The negated velocity of another field."""
    return Negate([ctx.field(params.field)])


@hookimpl
def fieldkit_register_sources(register: Register) -> None:
    register("example.constant", build_constant, ConstantParams)


@hookimpl
def fieldkit_register_operators(register: Register) -> None:
    register("example.negate", build_negate, NegateParams)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    @cli.command(name="example-hello")
    @click.option("--value", type=float, default=0.5, show_default=True, help="The constant image's value.")
    def example_hello(value: float) -> None:
        """Take one Euler step of example.constant from pure noise and print where it lands."""
        x = torch.randn(1, 1, 4, 4)
        x = x + (0.0 - 1.0) * ConstantField(value)(x, torch.ones(1), Cond())
        click.echo(f"hello from fieldkit-plugin-example: one Euler step from noise lands on {x.mean():.3f}")
