"""The optimizer and its learning-rate schedule, built from a graph's ``run`` settings.

One implementation for every loop. The schedules are diffusers' ``--lr_scheduler`` choices, as a
``torch.optim.lr_scheduler.LambdaLR`` whose multiplier of ``run.lr`` at update ``k`` (0-based), with
``W = run.warmup_steps`` and ``T = run.steps``, is

    warmup (k < W)   f(k) = k / W
    constant         f(k) = 1
    linear           f(k) = (T - k) / (T - W)
    cosine           f(k) = (1 + cos(pi * (k - W) / (T - W))) / 2

The schedule is a pure function of the step and the current settings, so a resumed run continues the same
curve, and a run resumed with other settings (a longer ``run.steps``, another ``run.lr``) follows them from
the step it resumes at.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fieldkit.graph.schema import RunSpec

SCHEDULES = ("constant", "cosine", "linear")


def lr_factor(schedule: str, step: int, warmup: int, total: int) -> float:
    """The multiplier of the base learning rate at update ``step`` (see the module docstring)."""
    if step < warmup:
        return step / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown learning-rate schedule {schedule!r} (choose from {', '.join(SCHEDULES)})")


def make_optimizer(params: Iterable[nn.Parameter], run: RunSpec) -> torch.optim.Optimizer:
    """``run.optimizer`` over ``params`` at ``run.lr`` with ``run.weight_decay``."""
    params = list(params)
    spec = run.optimizer
    if spec.type == "sgd":
        return torch.optim.SGD(
            params, lr=run.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=run.weight_decay
        )
    if spec.type == "adafactor":
        return torch.optim.Adafactor(params, lr=run.lr, weight_decay=run.weight_decay)
    # The fused kernel (CPU and CUDA) updates every tensor in one pass instead of a loop over them.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(
        params, lr=run.lr, betas=spec.betas, eps=spec.eps, weight_decay=run.weight_decay, fused=fused
    )


def make_lr_schedule(optimizer: torch.optim.Optimizer, run: RunSpec) -> LambdaLR:
    """``run.lr_schedule`` with ``run.warmup_steps`` over ``run.steps`` updates; call ``step()`` after each
    optimizer step. Its first learning rate is already set on the optimizer when this returns."""
    schedule, warmup, total = run.lr_schedule, run.warmup_steps, run.steps

    def factor(step: int) -> float:
        return lr_factor(schedule, step, warmup, total)

    return LambdaLR(optimizer, factor)


def restore_lr_schedule(schedule: LambdaLR, state: dict[str, Any] | None, step: int, run: RunSpec) -> None:
    """Resume ``schedule`` at ``step``: load its saved state (when the checkpoint has one), then set the
    current ``run.lr`` and schedule at that step (the graph's settings win over the checkpoint's)."""
    if state is not None:
        schedule.load_state_dict(state)
    schedule.base_lrs = [run.lr] * len(schedule.optimizer.param_groups)
    for group in schedule.optimizer.param_groups:
        group["initial_lr"] = run.lr
    schedule.last_epoch = step - 1
    schedule.step()  # sets every group's lr for update ``step``
