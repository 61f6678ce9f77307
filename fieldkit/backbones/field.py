"""The field of a diffusers backbone: one adapter (or the base) of a transformer shared with other fields.

A call switches the shared transformer to its field's adapter, so N capabilities cost one base plus N adapters
in memory instead of N full models. Backbone plugins (SD3, Z-Image, ...) subclass :class:`SharedAdapterField`
and write only :meth:`~SharedAdapterField.velocity` (the convention boundary). peft and diffusers are imported
when used.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar, cast

import torch
from torch import Tensor, nn

from fieldkit.backbones import traced
from fieldkit.backbones.loading import SCHEDULER_FILE, build_model, load_model
from fieldkit.backbones.schedule import linear_sigmas, pipeline_sigmas
from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.field import ModuleField
from fieldkit.models.lora import AdapterSwitch, load_adapter, merge_and_strip

#: The projections of a diffusers joint (MMDiT-style) attention block, image stream then text stream: the
#: LoRA targets shared by SD3, FLUX and Qwen-Image (each adds its own feed-forwards).
JOINT_ATTENTION_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
)

F = TypeVar("F", bound="SharedAdapterField")


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the distinct parameters and buffers of ``module`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


class SharedAdapterField(ModuleField):
    """One adapter (``None``: the base) of a diffusers ``transformer`` shared with other fields.

    A backbone plugin subclasses it, sets the class attributes below and writes :meth:`velocity`, the
    convention boundary (fieldkit's ``v = eps - x0`` at ``sigma`` from the backbone's own prediction).
    :meth:`forward` checks the Cond keys and ``sigma`` (``[B]``; a 0-d sigma is broadcast), switches the
    shared transformer to this field's adapter, and calls :meth:`velocity`. A deep copy (what fieldkit's
    student is made from) is a standalone field computing the same velocity: its own adapter merged into the
    copied weights, the adapters of the other fields sharing the base dropped. ``scheduler`` is the
    pipeline's scheduler config, when the field was loaded from a pipeline folder: :meth:`sampling_sigmas`
    turns it into the sigmas the pipeline samples with. ``options`` are a subclass's own keyword arguments
    (kept by :meth:`spawn`).
    """

    #: What error messages call this backbone (``"SD3"``, ``"Z-Image"``).
    backbone: ClassVar[str]
    #: The diffusers model class of the transformer (``"SD3Transformer2DModel"``).
    model_class: ClassVar[str]
    #: The diffusers pipeline class whose ``lora_state_dict`` reads this backbone's LoRA files.
    lora_pipeline: ClassVar[str]
    #: The projections a LoRA student adapts by default.
    lora_targets: ClassVar[tuple[str, ...]]
    #: The Cond keys every call needs, and the hint of the error when one is missing.
    cond_keys: ClassVar[tuple[str, ...]] = ()
    cond_hint: ClassVar[str] = ""
    #: What the error of a folder without this transformer tells the user to point ``path`` at.
    load_hint: ClassVar[str] = "point `path` at a pipeline folder or a transformer folder saved by diffusers"
    #: Whether the transformer's forward branches on shapes and structure alone, never on tensor values, so
    #: that :meth:`run_transformer` may replay its no-grad passes (``run.trace``, fieldkit.backbones.traced).
    #: Set it only with a test that the replayed pass equals the eager one.
    traceable: ClassVar[bool] = False

    def __init__(
        self,
        transformer: nn.Module,
        switch: AdapterSwitch | None = None,
        adapter: str | None = None,
        *,
        scheduler: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # A diffusers model: its adapter API (diffusers' peft mixin) is not on nn.Module: untyped here.
        self.transformer: Any = transformer
        self.switch = switch or AdapterSwitch()
        self.adapter = adapter
        self.scheduler = scheduler

    @classmethod
    def load_transformer(
        cls,
        path: Path,
        subfolder: str | None = None,
        dtype: torch.dtype | None = None,
        variant: str | None = None,
        base_config: Path | None = None,
    ) -> Any:
        """``cls.model_class.from_pretrained`` from a local folder (a pipeline folder: its ``transformer/``;
        or a model folder), or ``from_single_file`` of a file with the config of the folder ``base_config``;
        nothing fetched, the dtype checked; ``dtype=None`` keeps the stored one."""
        return load_model(
            cls.model_class,
            path,
            subfolder,
            dtype,
            hint=cls.load_hint,
            variant=variant,
            base_config=base_config,
        )

    @classmethod
    def build_transformer(
        cls, config: dict[str, Any], seed: int = 0, dtype: torch.dtype | None = None
    ) -> Any:
        """A freshly initialised, seeded ``cls.model_class`` from config keys."""
        return build_model(cls.model_class, config, seed, dtype)

    # -- what a backbone writes ------------------------------------------------------------------------------
    def velocity(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        """``v = eps - x0`` at ``x`` ``[B, C, H, W]``, ``sigma`` ``[B]`` (checked, adapter active)."""
        raise NotImplementedError(f"{type(self).__name__} must define velocity(x, sigma, cond)")

    def run_transformer(self, **kwargs: Any) -> Any:
        """``self.transformer(**kwargs)``: what :meth:`velocity` calls, replayed where ``run.trace`` can
        (a :attr:`traceable` backbone's no-grad pass on the CPU inside an update), else eager."""
        if self.traceable:
            return traced.call(self.transformer, **kwargs)
        return self.transformer(**kwargs)

    def input_layer(self) -> nn.Module | None:
        """The layer that first sees ``x`` (its weight dtype is the compute dtype); ``None``: diffusers'."""
        return None

    def base_sigmas(self, steps: int) -> list[float] | None:
        """The sigmas the pipeline hands its scheduler's ``set_timesteps`` (``None``: the scheduler's own)."""
        return None

    def options(self) -> dict[str, Any]:
        """A subclass's own constructor keywords, for :meth:`spawn`."""
        return {}

    # -- what the kit does ----------------------------------------------------------------------------------
    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        for key in self.cond_keys:
            if key not in cond:
                raise FieldkitError(
                    f"the {self.backbone} field needs cond[{key!r}], got keys {sorted(cond)}",
                    hint=self.cond_hint or None,
                )
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        if tuple(sigma.shape) != (x.shape[0],):
            raise FieldkitError(
                f"the {self.backbone} field takes sigma of shape [B] = [{x.shape[0]}], "
                f"got {list(sigma.shape)}"
            )
        self.activate()
        return self.velocity(x, sigma, cond)

    def compute_dtype(self) -> torch.dtype:
        """The dtype the transformer's inputs take: :meth:`input_layer`'s weight dtype.

        diffusers' ``transformer.dtype`` walks every submodule (looking for layerwise-casting hooks) on each
        call: about 1 ms on a LoRA-wrapped tiny transformer, ~8% of a DanceOPD step (benchmarks/sd3.py). A
        hooked input layer defers to diffusers.
        """
        layer = self.input_layer()
        weight = getattr(layer, "weight", None)
        if weight is None or hasattr(layer, "_diffusers_hook") or not weight.is_floating_point():
            return cast(torch.dtype, self.transformer.dtype)
        return cast(torch.dtype, weight.dtype)

    def sampling_sigmas(self, steps: int, shape: tuple[int, ...]) -> Tensor | None:
        """The ``steps + 1`` sigmas the pipeline samples ``shape`` ``[C, H, W]`` latents with (``None``: no
        scheduler), with ``(H / p)(W / p)`` image tokens for a dynamically shifting scheduler."""
        if self.scheduler is None:
            return None
        patch = int(getattr(self.transformer.config, "patch_size", None) or 2)
        tokens = (shape[-2] // patch) * (shape[-1] // patch)
        return pipeline_sigmas(self.scheduler, steps, tokens, self.base_sigmas(steps))

    def activate(self) -> None:
        """Switch the shared transformer to this field's adapter."""
        self.switch.activate(self.transformer, self.adapter)

    def spawn(self, adapter: str | None, **options: Any) -> Self:
        """A field of the same kind over the same transformer and switch, running ``adapter`` (``options``
        override this field's own)."""
        kwargs = {**self.options(), **options}
        return type(self)(self.transformer, self.switch, adapter, scheduler=self.scheduler, **kwargs)

    def with_adapter(
        self, path: str | Path, name: str, *, scale: float = 1.0, weight_name: str | None = None
    ) -> Self:
        """A field over this field's transformer with the LoRA at ``path`` (diffusers / peft format) loaded
        as adapter ``name`` (scaled by ``scale``); this field and the new one share every base weight."""
        if self.adapter is not None:
            raise FieldkitError(
                f"adapter {name!r} must be loaded over a base field, not over adapter {self.adapter!r}"
            )
        load_adapter(
            self.transformer,
            self.switch,
            path,
            name,
            pipeline=self.lora_pipeline,
            scale=scale,
            weight_name=weight_name,
        )
        return self.spawn(name)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each transformer block's activations in the backward pass: what
        ``student.gradient_checkpointing: true`` turns on (a source's own ``gradient_checkpointing``, too)."""
        self.transformer.enable_gradient_checkpointing()

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the transformer as a diffusers model folder (``config.json`` + safetensors), with the
        pipeline's scheduler config as ``scheduler_config.json`` when the field has one."""
        if self.switch.hosted:
            raise FieldkitError(
                f"this {self.backbone} field shares its transformer with LoRA adapters; save a copy of it",
                hint="copy.deepcopy(field) merges the field's own adapter and drops the others",
            )
        self.transformer.save_pretrained(str(path), safe_serialization=True)
        if self.scheduler is not None:  # what sampling_sigmas needs when the folder is loaded again
            (Path(path) / SCHEDULER_FILE).write_text(json.dumps(self.scheduler, indent=1))
        return Path(path)

    def __deepcopy__(self, memo: dict[int, Any]) -> Self:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        new._own_weights()
        return new

    def _own_weights(self) -> None:
        """Merge this field's adapter into the base weights, drop every hosted adapter, and stop sharing."""
        if self.switch.hosted:
            merge_and_strip(self.transformer, [] if self.adapter is None else [self.adapter])
        self.switch = AdapterSwitch()
        self.adapter = None

    def extra_repr(self) -> str:
        return f"adapter={self.adapter!r}" if self.adapter is not None else "base"


class EditField(SharedAdapterField):
    """A :class:`SharedAdapterField` that is a T2I field, or (``edit``) an edit field: a batch whose Cond
    carries ``source`` (the image to edit) is an edit either way, and an edit field refuses a batch without
    one with ``edit_error`` (message, hint). ``edit`` is kept by :meth:`spawn`; :meth:`editing` is what
    ``velocity`` asks."""

    edit_error: ClassVar[tuple[str, str]] = (
        "this edit field needs cond['source'] (the image to edit)",
        "route it to an edit data bucket",
    )

    def __init__(
        self,
        transformer: nn.Module,
        switch: AdapterSwitch | None = None,
        adapter: str | None = None,
        *,
        edit: bool = False,
        scheduler: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(transformer, switch, adapter, scheduler=scheduler)
        self.edit = edit
        if edit:
            self.check_edit()

    def check_edit(self) -> None:
        """Refuse a transformer that cannot edit (an edit field's, at construction); default: none."""

    def options(self) -> dict[str, Any]:
        return {**super().options(), "edit": self.edit}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, edit={self.edit}"

    def editing(self, cond: Cond) -> bool:
        """Whether ``cond`` is an edit batch (carries ``source``); an edit field refuses one that is not."""
        editing = "source" in cond
        if self.edit and not editing:
            message, hint = self.edit_error
            raise FieldkitError(message, hint=hint)
        return editing


class PackedEditField(EditField):
    """An :class:`EditField` of a backbone whose pipelines pack latents in 2x2 patches and hand their
    scheduler ``linspace(1, 1/steps, steps)`` (FLUX, Qwen-Image; :mod:`fieldkit.backbones.packing`)."""

    def base_sigmas(self, steps: int) -> list[float]:
        return linear_sigmas(steps)


def as_shared_field(field: object, cls: type[F], what: str) -> F:
    """``field`` when it is a ``cls``, else a FieldkitError saying ``what`` must be one."""
    if not isinstance(field, cls):
        raise FieldkitError(
            f"{what} must be a field of the {cls.backbone} backbone, got {type(field).__name__}"
        )
    return field
