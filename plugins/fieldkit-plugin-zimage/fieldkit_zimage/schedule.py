"""The sigmas the Z-Image pipelines sample with, for fieldkit's Euler sampler and rollouts."""

from __future__ import annotations

from typing import Any

from torch import Tensor


def pipeline_sigmas(scheduler: dict[str, Any], steps: int, shape: tuple[int, ...]) -> Tensor:
    """``steps + 1`` sigmas exactly as ``ZImagePipeline`` / ``ZImageOmniPipeline`` step through them, for
    latents of per-sample ``shape`` ``[C, H, W]``: ``linspace(1, 1/steps, steps)`` through the scheduler
    (``shift``, or dynamic shifting with ``mu`` from the ``(H / 2)(W / 2)`` image tokens), then 0."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler)
    mu = calculate_shift(
        (shape[-2] // 2) * (shape[-1] // 2),
        sched.config.get("base_image_seq_len", 256),
        sched.config.get("max_image_seq_len", 4096),
        sched.config.get("base_shift", 0.5),
        sched.config.get("max_shift", 1.15),
    )
    sched.set_timesteps(sigmas=get_default_z_image_sigmas(steps), mu=mu)
    return sched.sigmas.clone()
