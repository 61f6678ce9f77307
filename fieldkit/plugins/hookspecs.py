"""The hooks a fieldkit plugin implements. Each receives a ``register`` callback (or the CLI group)."""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("fieldkit")
hookimpl = pluggy.HookimplMarker("fieldkit")


@hookspec
def fieldkit_register_sources(register: Any) -> None:
    """Register field sources: ``register(name, factory, params, description=...)``."""


@hookspec
def fieldkit_register_operators(register: Any) -> None:
    """Register operators (fields built from other fields): ``register(name, factory, params)``."""


@hookspec
def fieldkit_register_routers(register: Any) -> None:
    """Register routers (which route supervises each sample or update)."""


@hookspec
def fieldkit_register_methods(register: Any) -> None:
    """Register methods (how states are chosen and the loss is formed)."""


@hookspec
def fieldkit_register_datasets(register: Any) -> None:
    """Register data buckets (yield batches of Cond, and targets for off-policy baselines)."""


@hookspec
def fieldkit_register_metrics(register: Any) -> None:
    """Register metrics that score the samples of a route."""


@hookspec
def fieldkit_register_commands(cli: Any) -> None:
    """Add click commands to the ``fieldkit`` CLI group."""
