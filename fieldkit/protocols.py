"""The contracts between fieldkit's core and its plugins, in one module.

Every hook of a plugin receives a ``register`` callback typed for its kind (:data:`RegisterSource`, ...,
:class:`RegisterRouter`); each registered factory is called as ``factory(params, ctx)`` with its validated
``Params`` and a :class:`fieldkit.graph.BuildContext` and returns, by kind:

- a source or an operator: a :class:`~fieldkit.field.VelocityField`;
- a dataset: a :class:`DataBucket`;
- a metric: a :class:`Metric`;
- a method: a :class:`Method`, whose ``loss`` takes one :class:`LossInputs` and returns a :class:`LossOutput`;
- a router: a :class:`Router`. A router factory is ``factory(params, routes, ctx)``: the core builds the
  graph's routes (:meth:`fieldkit.graph.BuildContext.routes`, one :class:`Route` per ``routes:`` entry) and
  hands them over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeAlias, TypeVar, runtime_checkable

import torch
from pydantic import BaseModel
from torch import Tensor

from fieldkit.data import Batch, Shard
from fieldkit.field import VelocityField

if TYPE_CHECKING:  # the context factories receive (a type only: the graph layer sits above this module)
    from fieldkit.graph.builder import BuildContext


@runtime_checkable
class DataBucket(Protocol):
    """Yields batches for one capability. ``shape`` is the per-sample shape of the flow state.

    A bucket may also define ``evaluation() -> DataBucket``: the bucket metrics and sample grids draw from
    (e.g. held-out prompts); see :func:`fieldkit.data.evaluation_bucket`.
    """

    @property
    def shape(self) -> tuple[int, ...]:
        """The per-sample shape of the flow state (``[C, H, W]`` for images)."""
        ...

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """A batch drawn with ``generator`` (so runs and resumes are reproducible)."""
        ...


@runtime_checkable
class Metric(Protocol):
    """``metric(samples, batch) -> {name: value}`` for samples generated from ``batch.cond``. A value named
    ``score`` (higher is better) is what results tables combine over routes."""

    def __call__(self, samples: Tensor, batch: Batch) -> dict[str, float]: ...


@dataclass(frozen=True)
class Route:
    """One capability: its name, supervising field (None: data only), data bucket, routing weight and the
    metrics that score its samples."""

    name: str
    field: VelocityField | None
    data: DataBucket
    weight: float = 1.0
    metrics: tuple[Metric, ...] = ()


@runtime_checkable
class Router(Protocol):
    """Which route each micro-batch of an update draws its data from, and which field supervises it."""

    @property
    def routes(self) -> Sequence[Route]:
        """The routes it picks from (what its factory received), in order."""
        ...

    def plan(self, micro_batches: int, generator: torch.Generator, step: int) -> list[int]:
        """The route index of each micro-batch of one optimizer update (drawn with ``generator``): at least
        ``micro_batches`` of them (more only to visit every route). ``step`` counts the updates applied
        before this one (after ``--resume``, from the checkpoint's step), so a curriculum can follow it; a
        router keeps state of its own across ``--resume`` with
        :class:`~fieldkit.capabilities.HasCheckpointState`."""
        ...

    def target(self, index: int) -> VelocityField | None:
        """The field that supervises samples drawn from route ``index``."""
        ...


@dataclass(frozen=True)
class LossInputs:
    """Everything a method's loss sees for one micro-batch.

    ``student`` is the module being trained (maybe DDP-wrapped: its forward is the one with gradients);
    ``policy`` the same weights unwrapped, for rollouts; ``target`` the field the router chose (None for
    data-only routes); ``batch`` the GLOBAL batch (every process draws the same one; ``shard`` says which rows
    are this process's); ``shape`` the per-sample shape of the flow state; ``sigmas`` the rollout schedule;
    ``generator`` the noise stream (draw for the global batch, then shard: W processes compute what one
    does); ``step`` the optimizer updates applied before this one (a curriculum follows it).
    """

    student: VelocityField
    policy: VelocityField
    target: VelocityField | None
    batch: Batch
    shape: tuple[int, ...]
    sigmas: Tensor
    generator: torch.Generator
    shard: Shard = field(default_factory=Shard)
    step: int = 0


@dataclass
class LossOutput:
    """A method's loss for one micro-batch and what it cost."""

    loss: Tensor
    rollout_nfe: int = 0  # sequential rollout steps (forwards of the student)
    rollout_samples: int = 0  # samples those forwards processed, summed (finished samples leave the batch)
    query_sigmas: Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """How query states are chosen and the loss formed (``danceopd``, ``offpolicy``, ``dense``, ``sft``)."""

    def rollout_steps(self, default: int) -> int:
        """The N of the rollout schedule (``default``: the graph's ``flow.steps``)."""
        ...

    def loss(self, inputs: LossInputs) -> LossOutput:
        """The loss of one micro-batch (its backward is the engine's)."""
        ...


P = TypeVar("P", bound=BaseModel)
T_contra = TypeVar("T_contra", contravariant=True)


class Register(Protocol[T_contra]):
    """The callback a ``fieldkit_register_*`` hook receives, for factories that build a ``T``.

    ``register(name, factory, params=Params, *, description="")``: ``name`` is the YAML ``type:``; ``factory``
    is called as ``factory(params, ctx)`` with validated ``params`` (an instance of the pydantic class
    ``params``) and the :class:`~fieldkit.graph.BuildContext`; ``description`` is the one line listings show
    (default: the factory's docstring's first line).
    """

    def __call__(
        self,
        name: str,
        factory: Callable[[P, BuildContext], T_contra],
        params: type[P] = ...,
        *,
        description: str = "",
    ) -> None: ...


class RegisterRouter(Protocol):
    """The callback ``fieldkit_register_routers`` receives: a router factory is
    ``factory(params, routes, ctx)`` with the :class:`Route` of every ``routes:`` entry, built by the core."""

    def __call__(
        self,
        name: str,
        factory: Callable[[P, Sequence[Route], BuildContext], Router],
        params: type[P] = ...,
        *,
        description: str = "",
    ) -> None: ...


#: ``fieldkit_register_sources(register)``: factories build a field loaded from somewhere.
RegisterSource: TypeAlias = Register[VelocityField]
#: ``fieldkit_register_operators(register)``: factories build a field from other fields (``ctx.field(ref)``).
RegisterOperator: TypeAlias = Register[VelocityField]
#: ``fieldkit_register_datasets(register)``: factories build a :class:`DataBucket`.
RegisterDataset: TypeAlias = Register[DataBucket]
#: ``fieldkit_register_metrics(register)``: factories build a :class:`Metric`.
RegisterMetric: TypeAlias = Register[Metric]
#: ``fieldkit_register_methods(register)``: factories build a :class:`Method`.
RegisterMethod: TypeAlias = Register[Method]
