"""The contracts between fieldkit's core and its plugins: routes, routers and methods.

A graph's routes are built by the core (:meth:`fieldkit.graph.BuildContext.routes`): one :class:`Route` per
``routes:`` entry. A router factory receives that list and returns a :class:`Router`; a method factory returns
a :class:`Method`, whose ``loss`` takes one :class:`LossInputs` and returns a :class:`LossOutput`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from fieldkit.data import Batch, DataBucket, Shard
from fieldkit.eval.metrics import Metric
from fieldkit.field import VelocityField


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

    routes: Sequence[Route]

    def plan(self, micro_batches: int, generator: torch.Generator) -> list[int]:
        """The route index of each micro-batch of one optimizer update (drawn with ``generator``)."""
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
    does).
    """

    student: VelocityField
    policy: VelocityField
    target: VelocityField | None
    batch: Batch
    shape: tuple[int, ...]
    sigmas: Tensor
    generator: torch.Generator
    shard: Shard = field(default_factory=Shard)


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
