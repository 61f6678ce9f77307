"""Rollout schedules: the sigmas a pipeline really steps through against fieldkit's shifted even grid.

    .venv/bin/python benchmarks/schedules.py [--steps 16]

Builds the tiny SD3.5 and Z-Image pipelines (their schedulers are configured as the released models': shift
3, static), runs each pipeline for ``--steps`` steps and records the sigma of every pre-step state it visits,
then compares them with ``shift_sigma(linspace(1, 0, steps + 1), 3)`` (``flow.schedule: shift``). Also prints
the mean query sigma under the DanceOPD default (index ~ Beta(5, 2)), and checks that the field's own
``sampling_sigmas`` (``flow.schedule: model``) are exactly the pipeline's. Prints the table of docs/sd3.md
and docs/zimage.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from fieldkit.distill.queries import BETA, index_probabilities
from fieldkit.flow import sigma_schedule


def visited(pipe, steps: int, **call) -> torch.Tensor:
    """The sigma of every pre-step state of one pipeline call (read at each step's end from the scheduler)."""
    seen: list[float] = []
    pipe.set_progress_bar_config(disable=True)

    def record(p, i, t, kwargs):  # diffusers' callback signature
        seen.append(float(p.scheduler.sigmas[i]))
        return {}

    pipe(num_inference_steps=steps, output_type="latent", callback_on_step_end=record, **call)
    return torch.tensor(seen, dtype=torch.float64)


def sd3(root: Path, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(visited sigmas, the SD3 field's sampling_sigmas) of the tiny SD3.5 pipeline."""
    from diffusers import StableDiffusion3Pipeline
    from fieldkit_sd3.field import SD3Field
    from fieldkit_sd3.tiny import make_tiny_pipeline

    from fieldkit.backbones.loading import scheduler_config

    folder = make_tiny_pipeline(root / "sd3")
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), vae=None, local_files_only=True)
    seen = visited(pipe, steps, prompt="a cat", latents=torch.zeros(1, 4, 8, 8), max_sequence_length=16)
    own = SD3Field(pipe.transformer, scheduler=scheduler_config(folder)).sampling_sigmas(steps, (4, 8, 8))
    return seen, own


def zimage(root: Path, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(visited sigmas, the Z-Image field's sampling_sigmas) of the tiny ZImagePipeline."""
    from diffusers import ZImagePipeline
    from fieldkit_zimage.field import ZImageField
    from fieldkit_zimage.tiny import make_tiny_pipeline

    from fieldkit.backbones.loading import scheduler_config

    folder = make_tiny_pipeline(root / "zimage")
    pipe = ZImagePipeline.from_pretrained(str(folder), local_files_only=True)
    seen = visited(
        pipe, steps, prompt="a cat", latents=torch.zeros(1, 16, 8, 8), height=64, width=64, guidance_scale=0.0
    )
    own = ZImageField(pipe.transformer, scheduler=scheduler_config(folder)).sampling_sigmas(steps, (16, 8, 8))
    return seen, own


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    args = parser.parse_args(argv)
    from fieldkit.testing import quiet_diffusers

    quiet_diffusers()
    grid = sigma_schedule(args.steps, 3.0).double()[:-1]
    probs = index_probabilities(args.steps, *BETA["low"])
    print(f"{args.steps} steps; shift grid = shift_sigma(linspace(1, 0, {args.steps + 1}), 3)\n")
    print(
        "| pipeline | max abs difference (index) | last pre-step sigma: pipeline / grid | "
        "mean query sigma, Beta(5, 2): pipeline / grid |"
    )
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in (("StableDiffusion3Pipeline", sd3), ("ZImagePipeline", zimage)):
            seen, own = run(Path(tmp), args.steps)
            assert torch.equal(own[:-1].double(), seen), f"{name}: sampling_sigmas differ from the visited"
            diff = (seen - grid).abs()
            i = int(diff.argmax())
            print(
                f"| {name} | {float(diff.max()):.2g} (index {i}) | "
                f"{float(seen[-1]):.3f} / {float(grid[-1]):.3f} | "
                f"{float((probs * seen).sum()):.3f} / {float((probs * grid).sum()):.3f} |"
            )


if __name__ == "__main__":
    main()
