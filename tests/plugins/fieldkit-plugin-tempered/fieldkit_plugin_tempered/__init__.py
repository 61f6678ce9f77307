"""fieldkit-plugin-tempered: a router ``tempered`` (tempered route probabilities), a data bucket
``tempered.levels`` (flat grey images, one level per label), a metric ``tempered.level_error`` and a method
``tempered.straight`` (distillation on the data's straight paths).

Every ``fieldkit`` command imports this module, so it imports no torch: the types live in
``fieldkit_plugin_tempered.training``, which the factories import when a graph is built."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pydantic import Field

from fieldkit.plugin_api import Params, hookimpl

if TYPE_CHECKING:
    from fieldkit.plugin_api import (
        BuildContext,
        RegisterDataset,
        RegisterMethod,
        RegisterMetric,
        RegisterRouter,
        Route,
    )
    from fieldkit_plugin_tempered.training import LevelError, LevelsBucket, StraightPathMethod, TemperedRouter


class TemperedParams(Params):
    temperature: float = Field(1.0, gt=0, description="T: 1 follows the route weights, large T is uniform")


class LevelsParams(Params):
    classes: int = Field(2, ge=2, description="how many grey levels (labels)")
    shape: list[int] = Field(min_length=1, description="per-sample shape, e.g. [1, 4, 4]")


class LevelErrorParams(Params):
    classes: int = Field(2, ge=2, description="the bucket's number of levels")


def build_router(params: TemperedParams, routes: Sequence[Route], ctx: BuildContext) -> TemperedRouter:
    """Hard routing with tempered route probabilities ``w^(1/T)``."""
    from fieldkit_plugin_tempered.training import TemperedRouter

    return TemperedRouter(routes, params.temperature)


def build_levels(params: LevelsParams, ctx: BuildContext) -> LevelsBucket:
    """Flat grey images, one level per label."""
    from fieldkit_plugin_tempered.training import LevelsBucket

    return LevelsBucket(params.classes, params.shape)


def build_level_error(params: LevelErrorParams, ctx: BuildContext) -> LevelError:
    """How far each sample's mean pixel is from its label's grey level."""
    from fieldkit_plugin_tempered.training import LevelError

    return LevelError(params.classes)


def build_straight(params: Params, ctx: BuildContext) -> StraightPathMethod:
    """Distillation on straight-path states of the data."""
    from fieldkit_plugin_tempered.training import StraightPathMethod

    return StraightPathMethod()


@hookimpl
def fieldkit_register_routers(register: RegisterRouter) -> None:
    register("tempered", build_router, TemperedParams)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register("tempered.levels", build_levels, LevelsParams)


@hookimpl
def fieldkit_register_metrics(register: RegisterMetric) -> None:
    register("tempered.level_error", build_level_error, LevelErrorParams)


@hookimpl
def fieldkit_register_methods(register: RegisterMethod) -> None:
    register("tempered.straight", build_straight)
