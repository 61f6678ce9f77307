"""``SD3Field``: a diffusers ``SD3Transformer2DModel`` as a fieldkit velocity field.

The convention boundary, in one place: fieldkit's ``sigma`` in [0, 1] (1 = noise) becomes SD3's
``timestep = 1000 sigma`` (1-D, ``[B]``), and SD3 predicts ``noise - data``, which is fieldkit's
``v = eps - x0`` as it is. Conditions read from the :class:`~fieldkit.Cond`: ``text`` ``[B, T, D]`` (the
pipeline's ``prompt_embeds``) and ``pooled`` ``[B, P]`` (``pooled_prompt_embeds``); their null values (the
empty prompt's embeddings) are what classifier-free guidance contrasts against.

Several fields can share one transformer: the base alone, and one field per LoRA adapter loaded into it
(:meth:`SD3Field.with_adapter`). A call switches the shared transformer to its field's adapter, so N
capabilities cost one base plus N adapters in memory instead of N full models.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.field import ModuleField

if TYPE_CHECKING:
    from diffusers import SD3Transformer2DModel

#: The projections LoRA adapts by default: every attention projection of SD3's joint (and dual) attention,
#: the targets of diffusers' SD3 LoRA training script.
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")

#: SD3's time scale: the transformer embeds ``timestep = TIMESTEP_SCALE * sigma``.
TIMESTEP_SCALE = 1000.0


def tuner_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The peft LoRA layers of ``model`` with their qualified names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


class AdapterSwitch:
    """The LoRA adapters hosted by one shared transformer, and which one is active.

    Every field over the transformer holds this same object. :meth:`activate` changes the peft layers only
    when another adapter (or the base alone) is asked for, so consecutive calls of one field cost nothing.
    """

    def __init__(self) -> None:
        self.hosted: list[str] = []
        self.active: str | None = None
        self._layers: list[nn.Module] | None = None

    def add(self, name: str) -> None:
        """Record a newly loaded adapter (peft activates what it loads; the next call resets the state)."""
        self.hosted.append(name)
        self._layers = None
        self.active = "\0stale"

    def activate(self, transformer: nn.Module, name: str | None) -> None:
        """Run the transformer with adapter ``name`` alone, or with none (``None``: the base)."""
        if not self.hosted or name == self.active:
            return
        if self._layers is None:
            self._layers = [m for _, m in tuner_layers(transformer)]
        for layer in self._layers:
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(name, inference_mode=True)  # teacher adapters never train
        self.active = name


class SD3Field(ModuleField):
    """``v = transformer(x, timestep = 1000 sigma, text, pooled)`` of one adapter of a shared transformer.

    ``adapter = None`` is the base model. ``lora_targets`` names the projections a LoRA student adapts.
    A deep copy (what fieldkit's student is made from) is a standalone field computing the same velocity:
    its own adapter merged into the copied weights, the adapters of the other fields sharing the base dropped.
    """

    lora_targets = LORA_TARGETS

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        switch: AdapterSwitch | None = None,
        adapter: str | None = None,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.switch = switch or AdapterSwitch()
        self.adapter = adapter

    def forward(self, x: Tensor, sigma: Tensor, cond: Cond) -> Tensor:
        for key in ("text", "pooled"):
            if key not in cond:
                raise FieldkitError(
                    f"the SD3 field needs cond[{key!r}] (prompt embeddings), got keys {sorted(cond)}",
                    hint="use the sd3.prompts data bucket, or pass prompt_embeds as 'text' and "
                    "pooled_prompt_embeds as 'pooled'",
                )
        self.switch.activate(self.transformer, self.adapter)
        dtype = self.compute_dtype()
        if sigma.dim() == 0:
            sigma = sigma.expand(x.shape[0])
        out = self.transformer(
            hidden_states=x.to(dtype),
            timestep=sigma * TIMESTEP_SCALE,
            encoder_hidden_states=cond["text"].to(dtype),
            pooled_projections=cond["pooled"].to(dtype),
            return_dict=False,
        )[0]
        return out.to(x.dtype)

    def compute_dtype(self) -> torch.dtype:
        """The dtype the transformer's inputs take: its patch embedding's weight dtype.

        diffusers' ``transformer.dtype`` walks every submodule (looking for layerwise-casting hooks) on each
        call: about 1 ms on a LoRA-wrapped tiny transformer, 14 calls a DanceOPD step, ~8% of the step
        (benchmarks/sd3.py). The patch embedding is what first sees ``x``; a hooked one defers to diffusers.
        """
        proj = getattr(getattr(self.transformer, "pos_embed", None), "proj", None)
        weight = getattr(proj, "weight", None)
        if weight is None or hasattr(proj, "_diffusers_hook") or not weight.is_floating_point():
            return self.transformer.dtype
        return weight.dtype

    def with_adapter(
        self, path: str | Path, name: str, *, scale: float = 1.0, weight_name: str | None = None
    ) -> SD3Field:
        """A field over this field's transformer with the LoRA at ``path`` (diffusers / peft format) loaded
        as adapter ``name`` (scaled by ``scale``); this field and the new one share every base weight."""
        from diffusers import StableDiffusion3Pipeline

        if self.adapter is not None:
            raise FieldkitError(
                f"adapter {name!r} must be loaded over a base field, not over adapter {self.adapter!r}"
            )
        if name in self.switch.hosted:
            raise FieldkitError(
                f"this SD3 base already has an adapter named {name!r}", hint="choose another name"
            )
        path = Path(path)
        if path.is_file():
            path, weight_name = path.parent, weight_name or path.name
        state, metadata = StableDiffusion3Pipeline.lora_state_dict(
            str(path), weight_name=weight_name, return_lora_metadata=True, local_files_only=True
        )
        if not any(k.startswith("transformer.") for k in state):
            raise FieldkitError(f"{path}: no transformer LoRA weights (keys starting with 'transformer.')")
        with warnings.catch_warnings():  # several adapters on one model is the point here
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            self.transformer.load_lora_adapter(
                state, prefix="transformer", adapter_name=name, metadata=metadata
            )
        self.switch.add(name)
        for _, layer in tuner_layers(self.transformer):
            layer.set_scale(name, scale)
        self.transformer.requires_grad_(False)
        return SD3Field(self.transformer, self.switch, name)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the transformer as a diffusers model folder (``config.json`` + safetensors)."""
        if self.switch.hosted:
            raise FieldkitError(
                "this SD3 field shares its transformer with LoRA adapters; save a copy of it",
                hint="copy.deepcopy(field) merges the field's own adapter and drops the others",
            )
        self.transformer.save_pretrained(str(path), safe_serialization=True)
        return Path(path)

    def __deepcopy__(self, memo: dict[int, Any]) -> SD3Field:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        new._own_weights()
        return new

    def _own_weights(self) -> None:
        """Merge this field's adapter into the base weights, drop every hosted adapter, and stop sharing."""
        hosted = set(self.switch.hosted)
        if hosted:
            for name, layer in tuner_layers(self.transformer):
                present = set(layer._all_available_adapter_names())
                if self.adapter in present:
                    layer.merge(adapter_names=[self.adapter])
                with warnings.catch_warnings():  # peft warns when the active adapter goes
                    warnings.simplefilter("ignore")
                    for adapter in sorted(hosted & present):
                        layer.delete_adapter(adapter)
                if not layer._all_available_adapter_names():
                    parent_name, _, child = name.rpartition(".")
                    parent = self.transformer.get_submodule(parent_name) if parent_name else self.transformer
                    setattr(parent, child, layer.get_base_layer())
            configs = getattr(self.transformer, "peft_config", {})
            for adapter in hosted:
                configs.pop(adapter, None)
            if not configs:
                self.transformer._hf_peft_config_loaded = False
        self.switch = AdapterSwitch()
        self.adapter = None

    def extra_repr(self) -> str:
        return f"adapter={self.adapter!r}" if self.adapter is not None else "base"


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the distinct parameters and buffers of ``module`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def as_sd3_field(field: object, what: str) -> SD3Field:
    """``field`` when it is an :class:`SD3Field`, else a FieldkitError naming ``what`` needed it."""
    if not isinstance(field, SD3Field):
        raise FieldkitError(f"{what} needs an sd3 field, got {type(field).__name__}")
    return field
