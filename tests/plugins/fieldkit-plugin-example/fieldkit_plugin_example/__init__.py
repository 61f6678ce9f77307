"""fieldkit-plugin-example: a source ``example.constant``, an operator ``example.negate`` and a command
``fieldkit example-hello``.

Every ``fieldkit`` command imports this module, so it imports no torch: the fields live in
``fieldkit_plugin_example.fields``, which the factories import when a graph is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from pydantic import Field

from fieldkit.plugin_api import FieldRef, Params, hookimpl

if TYPE_CHECKING:
    from fieldkit.plugin_api import BuildContext, RegisterOperator, RegisterSource
    from fieldkit_plugin_example.fields import ConstantField, Negate


class ConstantParams(Params):
    value: float = Field(0.0, description="the pixel value of the constant image the flow carries noise to")


class NegateParams(Params):
    field: FieldRef = Field(description="the field to negate")


def build_constant(params: ConstantParams, ctx: BuildContext) -> ConstantField:
    """The flow that carries noise to a constant image."""
    from fieldkit_plugin_example.fields import ConstantField

    return ConstantField(params.value)


def build_negate(params: NegateParams, ctx: BuildContext) -> Negate:
    """The negated velocity of another field."""
    from fieldkit_plugin_example.fields import Negate

    return Negate([ctx.field(params.field)])


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register("example.constant", build_constant, ConstantParams)


@hookimpl
def fieldkit_register_operators(register: RegisterOperator) -> None:
    register("example.negate", build_negate, NegateParams)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    @cli.command(name="example-hello")
    @click.option("--value", type=float, default=0.5, show_default=True, help="The constant image's value.")
    def example_hello(value: float) -> None:
        """Take one Euler step of example.constant from pure noise and print where it lands."""
        import torch

        from fieldkit.plugin_api import Cond
        from fieldkit_plugin_example.fields import ConstantField

        x = torch.randn(1, 1, 4, 4)
        x = x + (0.0 - 1.0) * ConstantField(value)(x, torch.ones(1), Cond())
        click.echo(f"hello from fieldkit-plugin-example: one Euler step from noise lands on {x.mean():.3f}")
