"""The sigmas diffusers' SD3 scheduler samples with, for fieldkit's Euler sampler."""

from __future__ import annotations

from pathlib import Path

from torch import Tensor


def scheduler_sigmas(pipeline: Path, steps: int, subfolder: str = "scheduler") -> Tensor:
    """``steps + 1`` sigmas of the pipeline's ``FlowMatchEulerDiscreteScheduler``: exactly what
    ``StableDiffusion3Pipeline`` steps through, so ``euler_sample(field, noise, cond, sigmas)`` reproduces it.

    With a shift ``s``: ``sigma_i = s t_i / (1 + (s - 1) t_i)`` over ``t = linspace(1, 1/1000, steps)``,
    then 0: the last step before 0 starts at ``shift(1/1000)``, not at ``shift(1/steps)`` as fieldkit's
    ``sigma_schedule`` does.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(
        str(pipeline), subfolder=subfolder, local_files_only=True
    )
    scheduler.set_timesteps(steps)
    return scheduler.sigmas.clone()
