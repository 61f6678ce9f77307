"""The student: a trainable copy of a source field, trained in full or through LoRA adapters (peft)."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from fieldkit.errors import GraphError
from fieldkit.field import VelocityField
from fieldkit.graph.schema import LoraSpec, StudentSpec


def lora_targets(model: nn.Module) -> list[str]:
    """The modules LoRA adapts: the model's ``lora_targets`` if it names them, else every ``nn.Linear``.

    Linear layers are named in full (``blocks.0.image.mlp.0``): peft matches a target by name suffix, so a
    bare last component such as ``0`` (a layer of an ``nn.Sequential``) would also match ``blocks.0``.
    """
    declared = getattr(model, "lora_targets", None)
    if declared:
        return list(declared)
    return sorted(name for name, m in model.named_modules() if isinstance(m, nn.Linear))


def add_lora(model: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject LoRA adapters in place (``W x + (alpha / r) B A x``, ``B = 0`` at start); only they train."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = spec.targets or lora_targets(model)
    if not targets:
        raise GraphError("student.train is 'lora' but the model has no linear layers to adapt")
    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha or spec.rank, lora_dropout=spec.dropout, target_modules=targets
    )
    model.requires_grad_(False)
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)
    return model


def make_student(init: VelocityField, spec: StudentSpec) -> nn.Module:
    """A trainable deep copy of ``init`` (the source is left frozen and untouched)."""
    if not isinstance(init, nn.Module) or not any(True for _ in init.parameters()):
        raise GraphError(
            f"student.init {str(spec.init)!r} has no weights to train",
            hint="point student.init at a source with weights (e.g. a fieldkit.checkpoint), not an operator",
        )
    student = copy.deepcopy(init)
    student.train()
    if spec.train == "lora":
        return add_lora(student, spec.lora)
    return student.requires_grad_(True)


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The tensors a checkpoint must keep: trainable parameters, plus persistent buffers for full training."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if len(params) == sum(1 for _ in model.parameters()):
        return dict(model.state_dict())
    return params
