"""The metric protocol: a metric scores generated samples of one route against the batch they answer."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor

from fieldkit.data import Batch


@runtime_checkable
class Metric(Protocol):
    """``metric(samples, batch) -> {name: value}`` for samples generated from ``batch.cond``."""

    def __call__(self, samples: Tensor, batch: Batch) -> dict[str, float]: ...
