"""FSDP2 for ``run.parallel: fsdp``: what is sharded, how, and how full weights come back.

The student is sharded through accelerate's FSDP2 plugin with one shard unit per transformer block (the
classes the model declares in ``_no_split_modules``, else the class of its largest repeated children), then
the root. A sharded parameter is a DTensor holding ``1 / W`` of the tensor on each of ``W`` processes; a
forward gathers a block's weights just in time and frees them after it.

Reading full weights is a collective: :func:`full_state` gathers the student on every process (each must call
it), and :class:`PlainCopy` turns that into an ordinary module for sampling, evaluation and export. Training
state is saved sharded with ``torch.distributed.checkpoint`` (each process writes its own shard file).
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin, broadcast_object_list
from torch import Tensor, nn

from fieldkit.atomic import atomic_path
from fieldkit.distill.checkpoint import TrainState, checkpoint_path, prune_checkpoints, write_state
from fieldkit.errors import CheckpointError
from fieldkit.graph.schema import FsdpSpec


def shard_unit_classes(model: nn.Module) -> list[str]:
    """The class names FSDP shards as units: the model's ``_no_split_modules`` if it declares them (diffusers
    models do), else the class of the ``nn.ModuleList`` of one repeated class holding the most parameters
    (fieldkit's MMDiT: ``JointBlock``); ``[]`` when the model has none (then it is one unit)."""
    present = {type(m).__name__ for m in model.modules()}
    declared = [name for name in getattr(model, "_no_split_modules", None) or [] if name in present]
    if declared:
        return declared
    sizes: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            kinds = {type(child).__name__ for child in module}
            if len(kinds) == 1:
                sizes[kinds.pop()] += sum(p.numel() for p in module.parameters())
    return [sizes.most_common(1)[0][0]] if sizes else []


def enable_fsdp(acc: Accelerator, spec: FsdpSpec) -> None:
    """Make ``acc`` prepare models with FSDP2 (``fsdp_version=2``). accelerate 1.15 selects FSDP only for GPU
    process groups, so the distributed type is set here for every group (gloo on CPUs included)."""
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=[],  # set per student by use_shard_units
        reshard_after_forward=spec.reshard_after_forward,
    )
    acc.state.distributed_type = DistributedType.FSDP
    acc.state.fsdp_plugin = plugin


def use_shard_units(acc: Accelerator, model: nn.Module) -> None:
    """Shard ``model``'s blocks (see :func:`shard_unit_classes`) when ``acc`` prepares it."""
    acc.state.fsdp_plugin.transformer_cls_names_to_wrap = shard_unit_classes(model)


def broadcast_from_main(module: nn.Module) -> None:
    """Give every process the main process's parameters and buffers (as DDP does when it wraps): each
    process keeps only its own shard, so the replicas must agree before sharding (LoRA adapters are
    initialised from each process's own RNG)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        dist.broadcast(tensor.data, src=0)


def teacher_sources(routes: Iterable[object], fields: Iterable[object]) -> list[nn.Module]:
    """The built ``fields`` that hold weights and that the ``routes``' fields call (themselves, or inside an
    operator): the sources, not the operators around them; each once."""
    used = {id(sub) for r in routes if isinstance(r, nn.Module) for sub in r.modules()}
    weighted = [f for f in fields if isinstance(f, nn.Module) and any(True for _ in f.parameters())]
    unique = list({id(m): m for m in weighted if id(m) in used}.values())

    def wraps_another(m: nn.Module) -> bool:
        inside = {id(sub) for sub in m.modules() if sub is not m}
        return any(id(other) in inside for other in unique)

    return [m for m in unique if not wraps_another(m)]


def shard_frozen(module: nn.Module, device: torch.device) -> None:
    """Shard a frozen field in place (``fully_shard`` per block, then the root; no optimizer): its forwards
    become collectives, which every process runs alike."""
    from torch.distributed.fsdp import fully_shard

    broadcast_from_main(module)
    units = set(shard_unit_classes(module))
    for sub in reversed(list(module.modules())):
        if sub is not module and type(sub).__name__ in units:
            fully_shard(sub, reshard_after_forward=True)
    fully_shard(module, reshard_after_forward=True)
    module.to(device)


def is_sharded(tensor: Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a shard of a tensor spread over the processes)."""
    if not dist.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def full_tensor(tensor: Tensor) -> Tensor:
    """The whole tensor on every process (a collective for a DTensor; a plain tensor is returned as is)."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor  # type: ignore[attr-defined]


def full_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's whole state dict on every process (a collective: every process must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {name: value for name, value in state.items() if isinstance(value, Tensor)}


class PlainCopy:
    """An ordinary (unsharded) module of the student's structure, filled from a full state dict.

    Made before sharding: the structure is kept on the meta device (no memory), and the non-persistent
    buffers, which no state dict holds, are kept as they are (they are small: positions, frequencies).
    """

    def __init__(self, model: nn.Module) -> None:
        persistent = set(model.state_dict())
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers() if n not in persistent}
        # Copied with its tensors already on the meta device (memo), so the whole weights are never copied.
        memo: dict[int, Any] = {id(b): b.to("meta") for b in model.buffers()}
        memo.update({id(p): nn.Parameter(p.to("meta"), p.requires_grad) for p in model.parameters()})
        self.template = copy.deepcopy(model, memo)

    def build(self, state: Mapping[str, Tensor], device: torch.device) -> nn.Module:
        model = copy.deepcopy(self.template).to_empty(device=device)
        model.load_state_dict(state, strict=True)
        for name, value in self.buffers.items():
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner).register_buffer(leaf, value.to(device), persistent=False)
        return model


# -- sharded checkpoints ------------------------------------------------------------------------------------


def sharded_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, Tensor] | None
) -> dict[str, Any]:
    """What each process saves of the training state: its shards of the trained weights (frozen ones are
    the graph's, not the run's), of the optimizer state and of the EMA."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(ignore_frozen_params=True)
    state: dict[str, Any] = {
        "model": get_model_state_dict(model, options=options),
        "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
    }
    if ema is not None:
        state["ema"] = ema
    return state


def save_shards(state: dict[str, Any], folder: Path) -> None:
    """Every process writes its shards into ``folder`` (a collective; ``.metadata`` names them all)."""
    from torch.distributed.checkpoint import state_dict_saver

    state_dict_saver.save(state, checkpoint_id=folder)


def load_shards(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, ema: dict[str, Tensor] | None
) -> None:
    """Load a sharded checkpoint back into the shards of ``model``, ``optimizer`` and ``ema`` (a collective);
    a checkpoint that does not fit them is a CheckpointError on every process."""
    from torch.distributed.checkpoint import state_dict_loader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = sharded_state(model, optimizer, ema)
    try:
        saved = set(FileSystemReader(path).read_metadata().state_dict_metadata)
        # Adam keeps no state for a parameter that never had a gradient (MMDiT's text layers on labels alone):
        # such parameters are absent from the checkpoint and stay without state here too.
        kept = {
            k.rsplit(".", 1)[0].removeprefix("optimizer.state.")
            for k in saved
            if k.startswith("optimizer.state.")
        }
        state["optimizer"]["state"] = {k: v for k, v in state["optimizer"]["state"].items() if k in kept}
        state_dict_loader.load(state, checkpoint_id=path)
    except (CheckpointException, RuntimeError, ValueError, KeyError, OSError) as exc:
        failures = getattr(exc, "failures", None) or {}
        cause = next(iter(failures.values()), exc)  # a CheckpointException wraps each process's error
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        raise CheckpointError(
            f"{path}: its sharded state does not fit this run's student ({first})",
            hint="resume with the same graph (and student settings) that wrote it",
        ) from None
    set_model_state_dict(model, state["model"], options=StateDictOptions(ignore_frozen_params=True))
    # not strict: the parameters without Adam state (above) are allowed to have none
    partial = StateDictOptions(ignore_frozen_params=True, strict=False)
    set_optimizer_state_dict(model, optimizer, state["optimizer"], options=partial)


def save_sharded_checkpoint(
    acc: Accelerator, root: Path, state: TrainState, shards: dict[str, Any], keep_last: int
) -> Path:
    """Write the checkpoint of ``state.step`` as :func:`~fieldkit.distill.checkpoint.save_checkpoint` does
    (atomic, verified by its manifest, the newest ``keep_last`` kept), with every process writing its shards
    into it (a collective)."""
    final = checkpoint_path(root, state.step)
    with contextlib.ExitStack() as stack:
        tmp = [stack.enter_context(atomic_path(final, folder=True)) if acc.is_main_process else None]
        broadcast_object_list(tmp)  # the main process's temporary folder, for every process to write into
        assert tmp[0] is not None
        save_shards(shards, tmp[0])
        acc.wait_for_everyone()
        if acc.is_main_process:
            write_state(tmp[0], state)
    if acc.is_main_process:
        prune_checkpoints(root, keep_last)
    acc.wait_for_everyone()
    return final
