"""Sigma schedules, the flow interpolation and Euler sampling (with recorded, early-stopped rollouts).

Conventions: ``x_sigma = (1 - sigma) x0 + sigma eps`` with sigma = 1 noise and 0 data; ``v = eps - x0``;
an Euler step from ``sigma`` to ``sigma_next < sigma`` is ``x <- x + (sigma_next - sigma) v``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fieldkit.capabilities import HasSamplingSigmas
from fieldkit.cond import Cond
from fieldkit.errors import FieldkitError
from fieldkit.field import VelocityField, broadcast_sigma


def shift_sigma(sigma: Tensor, shift: float) -> Tensor:
    """SD3's timestep shift: ``sigma' = shift sigma / (1 + (shift - 1) sigma)`` (shift 1 is the identity)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_schedule(steps: int, shift: float = 1.0, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """``steps + 1`` sigmas from 1 to 0: ``shift_sigma(linspace(1, 0, steps + 1), shift)``."""
    if steps < 1:
        raise ValueError(f"a schedule needs at least one step, got {steps}")
    return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).to(dtype)


def own_sigmas(field: object, steps: int, shape: tuple[int, ...]) -> Tensor | None:
    """The ``steps + 1`` sigmas ``field``'s own pipeline samples latents of ``shape`` with: its
    ``sampling_sigmas``, or, for an operator (guidance over a teacher, say), those of the first field it is
    built from that has them (depth first); ``None`` when none has."""
    for part in field.modules() if isinstance(field, nn.Module) else [field]:
        if isinstance(part, HasSamplingSigmas):
            sigmas = part.sampling_sigmas(steps, shape)
            if isinstance(sigmas, Tensor):
                return sigmas
    return None


def rollout_sigmas(schedule: str, steps: int, shift: float, field: object, shape: tuple[int, ...]) -> Tensor:
    """The ``steps + 1`` sigmas a rollout steps through.

    ``shift``: :func:`sigma_schedule` (an even grid, shifted). ``model``: the sigmas ``field``'s own pipeline
    samples latents of ``shape`` with at inference, :func:`own_sigmas` (its scheduler's shift or dynamic
    shifting; an operator's from the fields it is built from); an error when the field has none.
    ``auto``: ``model`` when the field has them, else ``shift``.
    """
    if schedule not in ("auto", "model", "shift"):
        raise ValueError(f"unknown schedule {schedule!r}; use auto, model or shift")
    sigmas = None if schedule == "shift" else own_sigmas(field, steps, shape)
    if sigmas is not None:
        return sigmas.to(torch.float32)
    if schedule == "model":
        raise FieldkitError(
            f"flow.schedule is 'model' but the student's init ({type(field).__name__}) has no scheduler",
            hint="load student.init from a pipeline folder (with scheduler/), or use flow.schedule: shift",
        )
    return sigma_schedule(steps, shift)


def interpolate(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """The flow state ``x_sigma = (1 - sigma) x0 + sigma eps`` (``sigma`` is ``[B]``)."""
    s = broadcast_sigma(sigma, x0)
    return (1 - s) * x0 + s * eps


def target_velocity(x0: Tensor, eps: Tensor) -> Tensor:
    """The conditional flow-matching target ``v = eps - x0``."""
    return eps - x0


def euler_step(x: Tensor, v: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """One Euler step ``x + (sigma_next - sigma) v`` (sigmas are scalars or ``[B]``)."""
    return x + broadcast_sigma(sigma_next - sigma, x) * v


@dataclass(frozen=True)
class Trajectory:
    """What :func:`euler_sample` returns.

    ``states[i]`` is the pre-step state at ``sigmas[i]`` (shape ``[S, B, ...]``; empty unless recorded) and
    ``final`` the state after the last step taken (the clean sample when the run was not stopped early).
    """

    final: Tensor
    states: Tensor
    sigmas: Tensor
    nfe: int


def _check_sigmas(sigmas: Tensor) -> None:
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be 1-D with at least 2 entries, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("sigmas must decrease strictly from noise to data")


def euler_sample(
    field: VelocityField,
    x: Tensor,
    cond: Cond,
    sigmas: Tensor,
    *,
    stop_at: int | None = None,
    record: bool = False,
) -> Trajectory:
    """Integrate ``dx/dsigma = field(x, sigma, cond)`` with Euler from ``sigmas[0]`` down the schedule.

    ``stop_at = i`` stops once the pre-step state ``i`` is reached (``i`` NFEs, the state at ``sigmas[i]``
    is ``final``); ``record`` keeps every pre-step state, never the clean end state.
    """
    _check_sigmas(sigmas)
    steps = sigmas.numel() - 1
    stop = steps if stop_at is None else stop_at
    if not 0 <= stop <= steps:
        raise ValueError(f"stop_at must be in [0, {steps}], got {stop_at}")
    sigmas = sigmas.to(device=x.device, dtype=x.dtype)
    batch = x.shape[0]
    states = []
    for i in range(stop):
        if record:
            states.append(x)
        sigma = sigmas[i].expand(batch)
        x = euler_step(x, field(x, sigma, cond), sigmas[i], sigmas[i + 1])
    if record and stop < steps:
        states.append(x)
    stacked = torch.stack(states) if states else x.new_empty((0, *x.shape))
    return Trajectory(final=x, states=stacked, sigmas=sigmas[: stacked.shape[0]], nfe=stop)


def rollout_states(
    field: VelocityField,
    noise: Tensor,
    cond: Cond,
    sigmas: Tensor,
    indices: Tensor,
    at_least: int = 0,
) -> tuple[Tensor, int]:
    """Pre-step states of an Euler rollout at per-sample indices, stopping at the last one needed (or after
    ``at_least`` steps, the longest row running on: FSDP processes call the field equally often).

    ``indices`` is ``[B, K]`` (values in ``[0, N - 1]``); returns states ``[B, K, ...]`` and the sequential
    NFEs run, ``max(indices)``. A sample leaves the batch once its last index is reached, so the field sees
    ``sum_b max_k indices[b, k]`` samples in all rather than ``B max(indices)`` (fields act per sample).

    The schedule is planned once, on the host: the rows are sorted by their last index, longest first, so
    the rows still running are always a prefix and the batch shrinks by slicing. The loop has no gather and
    no device-to-host sync, which on a GPU would stall the queue of kernel launches.
    """
    _check_sigmas(sigmas)
    steps = sigmas.numel() - 1
    if indices.dim() != 2 or indices.shape[0] != noise.shape[0]:
        raise ValueError(f"indices must be [B, K] with B = {noise.shape[0]}, got {tuple(indices.shape)}")
    plan = indices.detach().cpu()
    if plan.numel() and (int(plan.min()) < 0 or int(plan.max()) >= steps):
        raise ValueError(f"rollout indices must lie in [0, {steps - 1}]")
    sigmas = sigmas.to(device=noise.device, dtype=noise.dtype)
    batch, k = plan.shape
    out = noise.new_empty((batch, k, *noise.shape[1:]))
    if not plan.numel():
        return out, 0
    row_last = plan.max(dim=1).values
    last = max(int(row_last.max()), at_least)
    order = torch.argsort(row_last, descending=True, stable=True)
    running = [max(1, int((row_last > i).sum())) for i in range(last)]  # rows that take step i: a prefix
    # Every (row, column) to record, grouped by the step that reaches it: its row in the sorted batch and
    # its place in ``out`` (original order, flattened over K); one host-to-device copy for all steps.
    flat = plan[order].flatten()
    by_step = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=last + 1).tolist()
    src = by_step // k
    records = torch.split(torch.stack([src, order[src] * k + by_step % k]).to(noise.device), counts, dim=1)
    flat_out = out.view(batch * k, *noise.shape[1:])
    order = order.to(noise.device)
    x, live_cond = noise[order], cond.index(order)
    for i in range(last + 1):
        if counts[i]:
            rows, slots = records[i]
            flat_out[slots] = x[rows]
        if i == last:
            break
        n = running[i]
        if n < x.shape[0]:
            x, live_cond = x[:n], live_cond.index(slice(0, n))
        v = field(x, sigmas[i].expand(n), live_cond)
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])
    return out, last


@torch.inference_mode()
def generate(
    field: VelocityField,
    cond: Cond,
    shape: tuple[int, ...],
    sigmas: Tensor,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    rows: int | None = None,
) -> Tensor:
    """Clean samples ``[B, *shape]``: Euler along ``sigmas`` from noise drawn with ``generator`` (all of it
    first, so the samples do not depend on ``rows``), ``rows`` samples at a time (``None``: all at once).
    Fields act per sample: smaller chunks lower the memory a call needs, not what it computes."""
    if rows is not None and rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    batch = cond.batch_size or 0
    noise = torch.randn((batch, *shape), generator=generator).to(device)
    cond = cond.to(device)
    if rows is None or rows >= batch:
        return euler_sample(field, noise, cond, sigmas).final.clone()
    chunks = [
        euler_sample(field, noise[i : i + rows], cond.index(slice(i, i + rows)), sigmas).final
        for i in range(0, batch, rows)
    ]
    return torch.cat(chunks)
