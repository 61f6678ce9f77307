"""The parameter models of the plugin's types (light to import: no torch model, no scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from fieldkit.plugin_api import FieldRef, Params

LocalOp = Literal["replace", "remove", "add"]
GlobalOp = Literal["invert", "bold", "mirror", "flip"]
Side = Literal["left", "right"]


class TargetParams(Params):
    """A limited or noisy view of a bucket's targets (setting (b) of examples/digits/reproduce.py)."""

    limit: int | None = Field(None, ge=1, description="draw batches from this many fixed pairs only")
    noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to the targets")
    seed: int = Field(0, description="seed of the fixed pairs and their noise")


class BucketParams(Params):
    """Settings shared by the digits buckets."""

    split: Literal["train", "heldout", "validation", "test"] = Field(
        "train", description="which digits to draw (validation and test halve the held-out ones)"
    )
    phrasing: Literal["train", "heldout"] = Field(
        "train", description="which phrasings of the prompts to sample (heldout: those nothing trains on)"
    )
    eval_phrasing: Literal["train", "heldout"] = Field(
        "heldout", description="which phrasings the evaluation twin (metrics, sample grids) reads"
    )
    eval_split: Literal["heldout", "validation", "test"] = Field(
        "heldout",
        description="which held-out digits the evaluation twin reads: all of them, or one of their two "
        "disjoint halves (validation: where settings are chosen; test: what is reported)",
    )
    drop: float = Field(0.0, ge=0, lt=1, description="probability of the empty prompt (CFG training)")
    seed: int = Field(0, description="seed of the train / held-out split of the digits")
    cache_dir: str | None = Field(None, description="text-embedding cache (default ~/.cache/fieldkit-digits)")
    targets: TargetParams | None = Field(None, description="a small and/or noisy sample of the targets")


class T2IParams(BucketParams):
    single: float = Field(0.3, ge=0, le=1, description="fraction of one-digit prompts (the rest: two digits)")


def _subset(values: Sequence[str] | None, what: str) -> list[str] | None:
    """A filter's values (``None``: no filter), refused when empty or repeated."""
    if values is None:
        return None
    if not values:
        raise ValueError(
            f"an empty list of {what} draws nothing; list at least one, or leave the key out for all"
        )
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} {', '.join(repeated)} listed more than once; list each once")
    return list(values)


class LocalEditParams(BucketParams):
    """A local-edit bucket, optionally filtered to some edits and sides (a capability's data)."""

    ops: list[LocalOp] | None = Field(
        None, description="draw only these edits, in the bucket's proportions (replace twice remove and add)"
    )
    sides: list[Side] | None = Field(None, description="edit only these sides (uniformly)")

    @field_validator("ops")
    @classmethod
    def _ops(cls, ops: list[str] | None) -> list[str] | None:
        return _subset(ops, "ops")

    @field_validator("sides")
    @classmethod
    def _sides(cls, sides: list[str] | None) -> list[str] | None:
        return _subset(sides, "sides")


class GlobalEditParams(BucketParams):
    """A global-edit bucket, optionally filtered to some transforms (a capability's data)."""

    ops: list[GlobalOp] | None = Field(None, description="draw only these transforms (uniformly)")

    @field_validator("ops")
    @classmethod
    def _ops(cls, ops: list[str] | None) -> list[str] | None:
        return _subset(ops, "ops")


class T2IMetricParams(Params):
    """Prompt following, Fréchet distance and realism of T2I samples."""

    seed: int = Field(0, description="seed of the held-out real canvases the Fréchet distance compares with")


class EditMetricParams(Params):
    """Success, preservation and the combined score of local and global edits."""

    per_op: bool = Field(False, description="also report success per edit operation (success/replace, ...)")


class DescribeTargetParams(Params):
    field: FieldRef = Field(description="the T2I field (usually guided) that draws the edited canvas")


__all__ = [
    "BucketParams",
    "DescribeTargetParams",
    "EditMetricParams",
    "GlobalEditParams",
    "LocalEditParams",
    "T2IMetricParams",
    "T2IParams",
    "TargetParams",
]
