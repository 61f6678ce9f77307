"""The student: a trainable copy of a source field, trained in full or through LoRA adapters (peft)."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol, cast

import torch
from torch import Tensor, nn

from fieldkit.distill.sharding import is_sharded
from fieldkit.errors import GraphError
from fieldkit.field import VelocityField
from fieldkit.graph.schema import LoraSpec, StudentSpec

if TYPE_CHECKING:
    from peft.tuners.lora import LoraLayer


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
    rank = spec.rank or int(getattr(model, "lora_rank", 8))  # the model's default rank, else 8
    config = LoraConfig(
        r=rank,
        lora_alpha=spec.alpha or rank,  # type: ignore[arg-type]  # peft annotates int; any float scales
        lora_dropout=spec.dropout,
        target_modules=targets,
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
    if spec.gradient_checkpointing:
        enable = getattr(student, "enable_gradient_checkpointing", None)
        if not callable(enable):
            raise GraphError(
                f"student.gradient_checkpointing is on but {type(student).__name__} (student.init "
                f"{str(spec.init)!r}) has no enable_gradient_checkpointing()",
                hint="turn it off, or use a model that has it (fieldkit's MMDiT); some sources take "
                "their own gradient_checkpointing parameter (e.g. sd3)",
            )
        enable()
    if spec.train == "lora":
        return add_lora(student, spec.lora)
    return student.requires_grad_(True)


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The tensors a checkpoint must keep: trainable parameters, plus persistent buffers for full training."""
    params: dict[str, Tensor] = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if len(params) == sum(1 for _ in model.parameters()):
        return dict(model.state_dict())
    return params


class _DeltaWeights(Protocol):
    def get_delta_weight(self, adapter: str) -> Tensor: ...


def _mergeable(layer: LoraLayer, training: bool) -> list[str]:
    """The active adapters of a peft LoRA layer whose merge computes exactly what the layer computes:
    plain LoRA (no DoRA or other variant, no LoRA bias) without active dropout; ``[]`` if any is not."""
    adapters = [a for a in layer.active_adapters if a in layer.lora_A]
    for a in adapters:
        dropout = layer.lora_dropout[a]
        if (
            a in getattr(layer, "lora_variant", {})
            or getattr(layer, "use_dora", {}).get(a, False)
            or getattr(layer, "lora_bias", {}).get(a, False)
            or not (isinstance(dropout, nn.Identity) or (dropout.p == 0 or not training))
        ):
            return []
    return adapters


@contextlib.contextmanager
def merged_lora(model: VelocityField) -> Iterator[VelocityField]:
    """Run ``model``'s LoRA layers as plain layers with merged weights ``W + (alpha / r) B A`` (no grad).

    Un-merged, each adapted layer costs two extra small matmuls, a scale and an add per call; a rollout
    calls the student ~11 times per step with the same weights, so merging once per rollout makes each of
    those forwards a plain forward. The base weights are not touched: a merged copy is swapped in for the
    block and the original parameter object swapped back after it (no merge / unmerge rounding drift), so
    training continues on exactly the weights it had. Layers whose merge would change what they compute
    (DoRA, LoRA bias, active dropout) and FSDP-sharded layers stay as they are. Use under ``torch.no_grad``
    or inference mode. A field that is no ``nn.Module`` has no LoRA layers: it is run as it is.
    """
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # no peft: no LoRA layers
        yield model
        return
    if not isinstance(model, nn.Module):
        yield model
        return
    swapped: list[tuple[LoraLayer, nn.Module, nn.Parameter]] = []
    try:
        for module in model.modules():
            if not isinstance(module, LoraLayer) or module.merged or module.disable_adapters:
                continue
            adapters = _mergeable(module, module.training)
            base = module.get_base_layer()
            weight = getattr(base, "weight", None)
            if not adapters or not isinstance(weight, nn.Parameter) or is_sharded(weight):
                continue  # an FSDP shard: its forward gathers the weight, a swap would bypass that
            with torch.autocast(weight.device.type, enabled=False):  # merge in the weights' own dtype
                deltas = cast(_DeltaWeights, module)  # each LoRA layer kind (linear, conv, ...) defines it
                merged = weight + sum(deltas.get_delta_weight(a) for a in adapters)
            base.weight = nn.Parameter(merged.to(weight.dtype), requires_grad=False)
            module.merged_adapters = list(adapters)  # peft's forward now calls the base layer alone
            swapped.append((module, base, weight))
        yield model
    finally:
        for layer, base, weight in reversed(swapped):
            base.weight = weight
            layer.merged_adapters = []
