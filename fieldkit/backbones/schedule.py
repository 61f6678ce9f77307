"""The sigmas a diffusers pipeline samples with, for fieldkit's Euler sampler and rollouts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from fieldkit.backbones.loading import check_scheduler, scheduler_config
from fieldkit.errors import FieldkitError


def linear_sigmas(steps: int) -> list[float]:
    """``linspace(1, 1/steps, steps)``: what the FLUX and Qwen-Image pipelines hand their scheduler."""
    return list(np.linspace(1.0, 1 / steps, steps))


def pipeline_sigmas(
    scheduler: dict[str, Any],
    steps: int,
    image_tokens: int | None = None,
    sigmas: Sequence[float] | None = None,
) -> Tensor:
    """``steps + 1`` sigmas exactly as a pipeline steps ``FlowMatchEulerDiscreteScheduler`` through them:
    ``set_timesteps(steps, sigmas=sigmas)`` (``sigmas``: what the pipeline passes, ``None`` for the
    scheduler's own), with, when the scheduler shifts dynamically, ``mu`` on the line through
    ``(base_image_seq_len, base_shift)`` and ``(max_image_seq_len, max_shift)`` at ``image_tokens``.

    With a static shift ``s`` the scheduler's own are ``sigma_i = f(t_i)``, ``f(t) = s t / (1 + (s - 1) t)``,
    over ``t = linspace(1, f(1/1000), steps)``, then 0.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    config = check_scheduler(scheduler, Path("scheduler"))
    sched = FlowMatchEulerDiscreteScheduler.from_config(config)
    config = sched.config  # with the scheduler's defaults filled in
    kwargs: dict[str, Any] = {}
    if config.get("use_dynamic_shifting"):
        if image_tokens is None:
            raise FieldkitError("a dynamically shifting scheduler needs the latent shape (its image tokens)")
        # the pipelines' calculate_shift, term for term (so the sigmas match to the bit)
        m = (config["max_shift"] - config["base_shift"]) / (
            config["max_image_seq_len"] - config["base_image_seq_len"]
        )
        b = config["base_shift"] - m * config["base_image_seq_len"]
        kwargs["mu"] = image_tokens * m + b
    sched.set_timesteps(steps, sigmas=None if sigmas is None else list(sigmas), **kwargs)
    sigmas_out: Tensor = sched.sigmas.clone()
    return sigmas_out


def scheduler_sigmas(
    pipeline: Path, steps: int, image_tokens: int | None = None, sigmas: Sequence[float] | None = None
) -> Tensor:
    """:func:`pipeline_sigmas` of the scheduler in ``pipeline``'s ``scheduler/`` folder."""
    config = scheduler_config(pipeline)
    if config is None:
        raise FieldkitError(f"no scheduler config in {pipeline / 'scheduler'}")
    return pipeline_sigmas(config, steps, image_tokens, sigmas)
