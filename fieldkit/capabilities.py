"""The optional capabilities a plugin's object may have, each a named Protocol.

The core asks ``isinstance(obj, HasX)`` (all are ``runtime_checkable``) where it needs one, so a plugin opts
in by defining the member, and a type checker sees what the member must look like. Importing this module
imports no torch (the annotations are strings), so a plugin's registration module may use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from torch import Tensor

    from fieldkit.cond import Cond
    from fieldkit.data import Batch
    from fieldkit.protocols import DataBucket


@runtime_checkable
class HasUncond(Protocol):
    """A field that says what its unconditional counterpart is: guidance evaluates the field at
    ``uncond(cond)`` for ``v_uncond`` (default: :meth:`fieldkit.Cond.uncond`, which drops the prompt keys)."""

    def uncond(self, cond: Cond) -> Cond: ...


@runtime_checkable
class HasSamplingSigmas(Protocol):
    """A field whose own pipeline samples with a known schedule: ``steps + 1`` sigmas from 1 to 0 for latents
    of per-sample ``shape`` (None: it has none). ``flow.schedule: model`` (and ``auto``) roll out on them."""

    def sampling_sigmas(self, steps: int, shape: tuple[int, ...]) -> Tensor | None: ...


@runtime_checkable
class HasCaptions(Protocol):
    """A data bucket that can say what each sample of a batch asks for (its prompt or instruction): the
    captions under sample grids and in the run report."""

    def captions(self, batch: Batch) -> Sequence[str]: ...


@runtime_checkable
class HasEvaluation(Protocol):
    """A data bucket with a held-out counterpart (e.g. prompt phrasings training never sees): metrics and
    sample grids draw from ``evaluation()`` instead of the bucket itself."""

    def evaluation(self) -> DataBucket: ...


@runtime_checkable
class HasLoraTargets(Protocol):
    """A model that names the modules LoRA adapts (peft ``target_modules``); default: every ``nn.Linear``."""

    @property
    def lora_targets(self) -> Sequence[str]: ...


@runtime_checkable
class HasLoraRank(Protocol):
    """A model with its own default LoRA rank (``student.lora.rank`` overrides it; default 8)."""

    @property
    def lora_rank(self) -> int: ...


@runtime_checkable
class SupportsGradientCheckpointing(Protocol):
    """A model that can recompute activations in backward (``student.gradient_checkpointing: true``)."""

    def enable_gradient_checkpointing(self) -> None: ...


@runtime_checkable
class SavesPretrained(Protocol):
    """A model that writes itself to a folder its source type reads back (the run's ``final/`` student)."""

    def save_pretrained(self, path: Path) -> object: ...


@runtime_checkable
class HasCheckpointState(Protocol):
    """An object with state to keep across ``--resume`` (a curriculum router's progress, for one): every
    checkpoint saves ``checkpoint_state()`` (JSON: numbers, strings, lists, mappings), and a resumed run hands
    it to ``load_checkpoint_state`` before its first update."""

    def checkpoint_state(self) -> dict[str, Any]: ...

    def load_checkpoint_state(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class NeedsRouteFields(Protocol):
    """A method's ``Params`` whose method needs a supervising field on every route (the validator then refuses
    data-only routes); ``needs_route_fields = False`` or no attribute: data-only routes are fine."""

    needs_route_fields: ClassVar[bool]


def needs_route_fields(params: object) -> bool:
    """Whether a method's params declare :class:`NeedsRouteFields` with the flag on."""
    return isinstance(params, NeedsRouteFields) and params.needs_route_fields
