"""The sigmas diffusers' SD3 pipeline samples with, for fieldkit's Euler sampler and rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from fieldkit.errors import FieldkitError
from fieldkit.models.diffusers_loading import scheduler_config


def pipeline_sigmas(
    scheduler: dict[str, Any], steps: int, shape: tuple[int, ...] | None = None, patch_size: int = 2
) -> Tensor:
    """``steps + 1`` sigmas exactly as ``StableDiffusion3Pipeline`` steps through them: the scheduler's
    ``set_timesteps(steps)`` (with ``mu`` from the ``(H / p)(W / p)`` image tokens of latents of ``shape``
    when the scheduler shifts dynamically).

    With a static shift ``s``: ``sigma_i = s t_i / (1 + (s - 1) t_i)`` over
    ``t = linspace(1, 1/1000, steps)``, then 0.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler)
    kwargs = {}
    if sched.config.get("use_dynamic_shifting"):
        if shape is None:
            raise FieldkitError("a dynamically shifting scheduler needs the latent shape")
        kwargs["mu"] = calculate_shift(
            (shape[-2] // patch_size) * (shape[-1] // patch_size),
            sched.config.get("base_image_seq_len", 256),
            sched.config.get("max_image_seq_len", 4096),
            sched.config.get("base_shift", 0.5),
            sched.config.get("max_shift", 1.16),
        )
    sched.set_timesteps(steps, **kwargs)
    return sched.sigmas.clone()


def scheduler_sigmas(
    pipeline: Path, steps: int, shape: tuple[int, ...] | None = None, patch_size: int = 2
) -> Tensor:
    """:func:`pipeline_sigmas` of the scheduler in ``pipeline``'s ``scheduler/`` folder."""
    config = scheduler_config(pipeline)
    if config is None:
        raise FieldkitError(f"no scheduler config in {pipeline / 'scheduler'}")
    return pipeline_sigmas(config, steps, shape, patch_size)
