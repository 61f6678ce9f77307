"""The student: a trainable copy of a source field, trained in full or through LoRA adapters
(:mod:`fieldkit.models.lora`)."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from fieldkit.capabilities import SupportsGradientCheckpointing
from fieldkit.errors import GraphError
from fieldkit.field import VelocityField
from fieldkit.graph.schema import StudentSpec
from fieldkit.models.lora import add_lora, merge_and_strip, tuner_layers


def make_student(init: VelocityField, spec: StudentSpec) -> nn.Module:
    """A trainable deep copy of ``init`` (the source is left frozen and untouched)."""
    if not isinstance(init, nn.Module) or not any(True for _ in init.parameters()):
        raise GraphError(
            f"student.init {str(spec.init)!r} has no weights to train",
            hint="point student.init at a source with weights (e.g. a fieldkit.checkpoint), not an operator",
        )
    student = copy.deepcopy(init)
    if tuner_layers(student):  # a LoRA teacher (fieldkit.lora): its adapter merged, W + (alpha / r) B A
        merge_and_strip(student)
    student.train()
    if spec.gradient_checkpointing:
        if not isinstance(student, SupportsGradientCheckpointing):
            raise GraphError(
                f"student.gradient_checkpointing is on but {type(student).__name__} (student.init "
                f"{str(spec.init)!r}) has no enable_gradient_checkpointing()",
                hint="turn it off, or train a model that has it (fieldkit's MMDiT, the diffusers backbones "
                "such as sd3 and zimage)",
            )
        student.enable_gradient_checkpointing()
    if spec.train == "lora":
        try:
            return add_lora(student, spec.lora)
        except ValueError as exc:  # peft: targets that match no module of the student
            raise GraphError(
                f"student.lora: {exc}",
                hint="name modules of the student in student.lora.targets (print(model) lists them), or "
                "leave targets unset for the model's choice",
            ) from None
    return student.requires_grad_(True)


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The tensors a checkpoint must keep: trainable parameters, plus persistent buffers for full training."""
    params: dict[str, Tensor] = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if len(params) == sum(1 for _ in model.parameters()):
        return dict(model.state_dict())
    return params
