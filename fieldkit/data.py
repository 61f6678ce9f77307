"""Data buckets: what a route samples its conditions (and, for off-policy baselines, its targets) from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fieldkit.capabilities import HasCaptions, HasEvaluation
from fieldkit.cond import Cond

if TYPE_CHECKING:
    from fieldkit.protocols import DataBucket


@dataclass(frozen=True)
class Batch:
    """``cond`` of every sample; ``target``: clean images ``x0`` where the bucket has them; ``source``: the
    images an edit starts from, where it has them (sample grids show them above the samples)."""

    cond: Cond
    target: Tensor | None = None
    source: Tensor | None = None

    def to(self, device: torch.device) -> Batch:
        return Batch(self.cond.to(device), _to(self.target, device), _to(self.source, device))

    def rows(self, rows: slice | Tensor) -> Batch:
        """The rows ``rows`` (a slice or an index tensor) of every part."""
        target = None if self.target is None else self.target[rows]
        source = None if self.source is None else self.source[rows]
        return Batch(self.cond.index(rows), target, source)


def _to(x: Tensor | None, device: torch.device) -> Tensor | None:
    return None if x is None else x.to(device)


def evaluation_bucket(bucket: DataBucket) -> DataBucket:
    """The bucket that metrics and sample grids draw from: ``bucket.evaluation()`` when the bucket defines it
    (e.g. held-out images and prompt phrasings that training never sees), else ``bucket`` itself."""
    return bucket.evaluation() if isinstance(bucket, HasEvaluation) else bucket


def batch_captions(bucket: DataBucket, batch: Batch) -> list[str]:
    """One caption per sample of ``batch`` (its prompt or instruction): ``bucket.captions(batch)`` when the
    bucket defines it, else none."""
    return [str(c) for c in bucket.captions(batch)] if isinstance(bucket, HasCaptions) else []


@dataclass(frozen=True)
class Shard:
    """This process's rows of a global batch: ``[rank n / world, (rank + 1) n / world)``.

    Every process draws the same global batch and the same noise, then keeps its own rows, so ``W`` processes
    with batch ``b`` compute exactly what one process computes with batch ``W b``.
    """

    rank: int = 0
    world: int = 1
    #: The processes' forwards are collectives (FSDP): each runs the same number of them, the longest
    #: process's, even where its own rows would stop earlier.
    lockstep: bool = False

    def rows(self, n: int) -> slice:
        per = n // self.world
        if per * self.world != n:
            raise ValueError(f"a global batch of {n} does not split over {self.world} processes")
        return slice(self.rank * per, (self.rank + 1) * per)

    def take(self, batch: Batch) -> Batch:
        """This shard's rows of ``batch``."""
        return batch.rows(self.rows(batch.cond.batch_size or 0))
