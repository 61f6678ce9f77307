"""Fields that share one diffusers transformer: the base alone and one field per LoRA adapter loaded into it.

A call switches the shared transformer to its field's adapter, so N capabilities cost one base plus N adapters
in memory instead of N full models. Backbone plugins (SD3, Z-Image) subclass :class:`SharedAdapterField` and
write only their ``forward`` (the convention boundary). peft and diffusers are imported when used.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from fieldkit.errors import FieldkitError
from fieldkit.field import ModuleField
from fieldkit.models.lora import AdapterSwitch, load_adapter, merge_and_strip


def parameter_bytes(module: nn.Module) -> int:
    """Bytes held by the distinct parameters and buffers of ``module`` (shared tensors counted once)."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        seen[id(tensor)] = tensor.numel() * tensor.element_size()
    return sum(seen.values())


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
        if self.switch.hosted:
            merge_and_strip(self.transformer, [] if self.adapter is None else [self.adapter])
        self.switch = AdapterSwitch()
        self.adapter = None

    def extra_repr(self) -> str:
        return f"adapter={self.adapter!r}" if self.adapter is not None else "base"


def as_shared_field(field: object, cls: type[SharedAdapterField], what: str, kind: str) -> Any:
    """``field`` when it is a ``cls``, else a FieldkitError naming ``what`` needed a ``kind`` field."""
    if not isinstance(field, cls):
        raise FieldkitError(f"{what} needs {kind} field, got {type(field).__name__}")
    return field
