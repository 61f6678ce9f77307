"""What one training update holds at least, counted on the meta device before the run allocates anything.

The student is built on the meta device; its trainable parameters count four times (weights, gradients and
an optimizer's two moments); the activations one update keeps for backward are the bytes autograd saves in
a forward of the student on the meta device, per sample, scaled to ``batch_size x states per sample``
(``method.k`` queries, or every step of a Flow-OPD rollout); the rollout's stored states are added. The
count is a lower bound of the real peak (allocator slack, teachers' activations and temporary tensors are
not counted), so a refusal is certain to be right; a run that passes can still be too large.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from fieldkit.distill.student import make_student
from fieldkit.errors import FieldkitError
from fieldkit.graph.builder import BuildContext
from fieldkit.graph.loader import Graph
from fieldkit.memory_guard import available_bytes, check_fits, tensor_bytes


def run_device(graph: Graph) -> torch.device:
    """The device ``run.device`` names (``auto``: CUDA when there is one, else the CPU); a device this
    machine does not have is refused (accelerate would fall back to the CPU without a word)."""
    name = graph.spec.run.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not present.get(device.type, True):
        raise FieldkitError(
            f"{graph.source.where(('run', 'device'))}: run.device is {name}, and this machine has no "
            f"{device.type.upper()} device that PyTorch can use, so the run would train on the CPU",
            hint="set run.device: cpu (or auto)",
        )
    return device


def training_bytes(graph: Graph) -> int:
    """What one update of ``graph``'s run holds at least, counted on the meta device (see the module)."""
    spec, meta = graph.spec, torch.device("meta")
    assert spec.student is not None
    ctx = BuildContext(graph, device=meta)
    student = make_student(ctx.field(str(spec.student.init)), spec.student).to(meta)
    trainable = sum(p.numel() * p.element_size() for p in student.parameters() if p.requires_grad)
    weights = tensor_bytes(student) + 3 * trainable
    method = graph.method.params
    rollout = int(getattr(method, "rollout_steps", None) or spec.flow.steps)
    per_sample = int(getattr(method, "k", 1))
    if hasattr(method, "group"):  # Flow-OPD: every state of the rollout is trained on
        per_sample = rollout
    activations = states = 0
    # the data only (teachers are not built here), on the run's device: a bucket's encoders (sd3.prompts,
    # zimage.prompts) cannot encode on the meta device, and what they cache the run reads again
    data_ctx = BuildContext(graph, device=run_device(graph))
    for route in spec.routes:
        data = data_ctx.data(route)
        saved = _saved_bytes(student, data, meta)
        sample = math.prod(data.shape) * 4
        activations = max(activations, saved * spec.run.batch_size * per_sample)
        states = max(states, sample * spec.run.batch_size * (rollout + 1))
    return weights + activations + states


def _saved_bytes(student: nn.Module, data: Any, meta: torch.device) -> int:
    """Bytes autograd saves for backward per sample in a forward of ``student`` on ``data`` (on meta): the
    saved bytes of a batch of two less those of one, so that the weights a layer saves are not counted."""

    def saved(n: int) -> int:
        batch = data.sample(n, torch.Generator().manual_seed(0)).to(meta)
        x = torch.zeros((n, *data.shape), device=meta)
        sigma = torch.full((n,), 0.5, device=meta)
        total = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.enable_grad():
            student(x, sigma, batch.cond)
        return total

    try:
        saved(1)  # a first forward may save one-off tensors (caches built on first use): not per sample
        return max(saved(2) - saved(1), 0)
    except (Exception, SystemExit):
        # a forward that reads its inputs' values (Z-Image unpacks text by its lengths) cannot run on the
        # meta device, and a student or bucket that does not take this route's data, or exits the process,
        # is the build's checks' to report (route_checks, with the lines and the plugin): their activations
        # are not counted, the rest of the update still is
        return 0


def check_training_fits(graph: Graph) -> None:
    """Refuse a run whose update would not fit in the memory of its device (see the module docstring)."""
    device = run_device(graph)
    if available_bytes(device) is None or graph.spec.student is None or not graph.spec.routes:
        return
    run = graph.spec.run
    check_fits(
        training_bytes(graph),
        device,
        f"{graph.source.path}: one update (run.batch_size {run.batch_size}, the student, its gradients, "
        "optimizer state and activations)",
        "lower run.batch_size (raise run.grad_accum to keep the samples per step), turn on "
        "student.gradient_checkpointing, or train a LoRA",
    )
