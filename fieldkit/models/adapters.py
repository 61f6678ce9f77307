"""Fields that share one diffusers transformer: the base alone and one field per LoRA adapter loaded into it.

A call switches the shared transformer to its field's adapter, so N capabilities cost one base plus N adapters
in memory instead of N full models. Backbone plugins (SD3, Z-Image) subclass :class:`SharedAdapterField` and
write only their ``forward`` (the convention boundary). peft and diffusers are imported when used.
"""

from __future__ import annotations

import copy
import importlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import nn

from fieldkit.errors import FieldkitError
from fieldkit.field import ModuleField

if TYPE_CHECKING:
    from peft.tuners.tuners_utils import BaseTunerLayer


def tuner_layers(model: nn.Module) -> list[tuple[str, BaseTunerLayer]]:
    """The peft LoRA layers of ``model`` with their qualified names."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the distinct parameters and buffers of ``module`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


def lora_parameters(model: nn.Module, rank: int, targets: tuple[str, ...]) -> int:
    """Parameters of a rank-``rank`` LoRA of ``model``: ``r (in + out)`` over every ``nn.Linear`` whose name
    ends with a target (what peft adapts)."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    )


class AdapterSwitch:
    """The LoRA adapters hosted by one shared transformer, and which one is active.

    Every field over the transformer holds this same object. :meth:`activate` changes the peft layers only
    when another adapter (or the base alone) is asked for, so consecutive calls of one field cost nothing.
    """

    def __init__(self) -> None:
        self.hosted: list[str] = []
        self.active: str | None = None
        self._layers: list[BaseTunerLayer] | None = None

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


class SharedAdapterField(ModuleField):
    """One adapter (``None``: the base) of a diffusers ``transformer`` shared with other fields.

    Subclasses set :attr:`lora_pipeline` (the diffusers pipeline class whose ``lora_state_dict`` reads the
    LoRA files of this backbone) and :attr:`lora_targets`, and call :meth:`activate` first in ``forward``.
    A deep copy (what fieldkit's student is made from) is a standalone field computing the same velocity: its
    own adapter merged into the copied weights, the adapters of the other fields sharing the base dropped.
    ``scheduler`` is the pipeline's scheduler config, when the field was loaded from a pipeline folder: a
    subclass's ``sampling_sigmas(steps, shape)`` turns it into the sigmas the pipeline samples with.
    """

    lora_pipeline: ClassVar[str]
    lora_targets: ClassVar[tuple[str, ...]]
    #: What error messages call this backbone (``"SD3"``, ``"Z-Image"``).
    backbone: ClassVar[str]

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

    def activate(self) -> None:
        """Switch the shared transformer to this field's adapter."""
        self.switch.activate(self.transformer, self.adapter)

    def spawn(self, adapter: str | None) -> SharedAdapterField:
        """A field of the same kind over the same transformer and switch, running ``adapter``."""
        return type(self)(self.transformer, self.switch, adapter, scheduler=self.scheduler)

    def with_adapter(
        self, path: str | Path, name: str, *, scale: float = 1.0, weight_name: str | None = None
    ) -> SharedAdapterField:
        """A field over this field's transformer with the LoRA at ``path`` (diffusers / peft format) loaded
        as adapter ``name`` (scaled by ``scale``); this field and the new one share every base weight."""
        from peft.tuners.lora import LoraLayer

        pipeline = getattr(importlib.import_module("diffusers"), self.lora_pipeline)
        if self.adapter is not None:
            raise FieldkitError(
                f"adapter {name!r} must be loaded over a base field, not over adapter {self.adapter!r}"
            )
        if name in self.switch.hosted:
            raise FieldkitError(
                f"this {self.backbone} base already has an adapter named {name!r}", hint="choose another name"
            )
        path = Path(path)
        if path.is_file():
            path, weight_name = path.parent, weight_name or path.name
        state, metadata = pipeline.lora_state_dict(
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
            if isinstance(layer, LoraLayer):
                layer.set_scale(name, scale)
        self.transformer.requires_grad_(False)
        return self.spawn(name)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write the transformer as a diffusers model folder (``config.json`` + safetensors)."""
        if self.switch.hosted:
            raise FieldkitError(
                f"this {self.backbone} field shares its transformer with LoRA adapters; save a copy of it",
                hint="copy.deepcopy(field) merges the field's own adapter and drops the others",
            )
        self.transformer.save_pretrained(str(path), safe_serialization=True)
        return Path(path)

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedAdapterField:
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


def as_shared_field(field: object, cls: type[SharedAdapterField], what: str, kind: str) -> Any:
    """``field`` when it is a ``cls``, else a FieldkitError naming ``what`` needed a ``kind`` field."""
    if not isinstance(field, cls):
        raise FieldkitError(f"{what} needs {kind} field, got {type(field).__name__}")
    return field
