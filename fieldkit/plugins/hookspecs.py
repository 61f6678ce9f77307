"""The hooks a fieldkit plugin implements. Each receives a ``register`` callback typed for its kind (or the
CLI group)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from fieldkit.protocols import (
        RegisterDataset,
        RegisterMethod,
        RegisterMetric,
        RegisterOperator,
        RegisterRouter,
        RegisterSource,
    )

hookspec = pluggy.HookspecMarker("fieldkit")
hookimpl = pluggy.HookimplMarker("fieldkit")


@hookspec
def fieldkit_register_sources(register: RegisterSource) -> None:
    """Register field sources: ``register(name, factory, params, description=...)``."""


@hookspec
def fieldkit_register_operators(register: RegisterOperator) -> None:
    """Register operators (fields built from other fields): ``register(name, factory, params)``."""


@hookspec
def fieldkit_register_routers(register: RegisterRouter) -> None:
    """Register routers (which route supervises each sample or update)."""


@hookspec
def fieldkit_register_methods(register: RegisterMethod) -> None:
    """Register methods (how states are chosen and the loss is formed)."""


@hookspec
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    """Register data buckets (yield batches of Cond, and targets for off-policy baselines)."""


@hookspec
def fieldkit_register_metrics(register: RegisterMetric) -> None:
    """Register metrics that score the samples of a route."""


@hookspec
def fieldkit_register_commands(cli: click.Group) -> None:
    """Add click commands to the ``fieldkit`` CLI group."""
