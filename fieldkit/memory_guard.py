"""Refuse what would exhaust memory before allocating it.

The rule: what a config will allocate is counted without allocating it, and must fit in ``FRACTION`` of the
memory the device has free (``MemAvailable`` for the CPU, ``cudaMemGetInfo`` for a GPU):

- a model: its parameters and buffers (non-persistent ones too, such as positional tables), built from its
  config on the meta device;
- a training run: the student counted so, with trainable parameters counted four times (weights, gradients
  and an optimizer's two moments), plus the activations one update keeps for backward, measured as the
  bytes autograd saves in one forward of the student on the meta device, scaled from one sample to
  ``batch_size x states per sample`` (``method.k`` queries, or every step of a Flow-OPD rollout), plus the
  rollout's stored states.

The counts are lower bounds of the real peak (allocator slack, teachers' activations and temporary tensors
are not counted), so a refusal is certain to be right; a run that passes can still be too large.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from fieldkit.errors import FieldkitError

if TYPE_CHECKING:
    from fieldkit.graph.loader import Graph

FRACTION = 0.9
GIB = 1024**3


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on ``device`` now (None where fieldkit cannot tell: mps, meta)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def tensor_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s parameters and buffers (persistent or not)."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def meta_bytes(build: Callable[[], nn.Module]) -> int:
    """:func:`tensor_bytes` of the module ``build()`` makes, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return tensor_bytes(build())


def gib(n: float) -> str:
    return f"{n / GIB:,.1f} GiB" if n >= GIB / 10 else f"{n / 2**20:,.1f} MiB"


def check_fits(need: int, device: torch.device, what: str, hint: str) -> None:
    """Raise a FieldkitError, before anything is allocated, when ``need`` bytes are more than ``FRACTION``
    of the memory free on ``device``."""
    have = available_bytes(device)
    if have is not None and need > FRACTION * have:
        raise FieldkitError(
            f"{what} needs at least {gib(need)} of memory, more than the {gib(have)} free on {device} "
            f"(fieldkit uses at most {FRACTION:.0%} of it); nothing was allocated",
            hint=hint,
        )


def check_model_fits(build: Callable[[], nn.Module], device: torch.device, what: str) -> None:
    """:func:`check_fits` for the parameters and buffers of the module ``build()`` makes, on ``device``."""
    if device.type == "meta":
        return
    check_fits(
        meta_bytes(build),
        device,
        what,
        "check the model's config (sample_size, hidden, depth, ...): it describes a larger model than "
        "this machine holds",
    )


def run_device(graph: Graph) -> torch.device:
    """The device ``run.device`` names (``auto``: CUDA when there is one, else the CPU)."""
    name = graph.spec.run.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_bytes(graph: Graph) -> int:
    """What one update of ``graph``'s run holds at least, counted on the meta device (see the module)."""
    from fieldkit.distill.student import make_student
    from fieldkit.graph.builder import BuildContext

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
    for route in spec.routes:  # the data only: teachers are not built here
        data = ctx.data(route)
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

    saved(1)  # a first forward may save one-off tensors (caches built on first use): not per sample
    return max(saved(2) - saved(1), 0)


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
