"""The parity matrix: fieldkit's Euler sampling of ``guidance(sd3, w)`` against ``StableDiffusion3Pipeline``
(``output_type="latent"``) over dtype x guidance x scheduler variant x batch / latent shape.

Tolerances: float32, 1e-5 (the pipeline and fieldkit compute the same float32 ops). bfloat16 / float16: on
average no further from the float32 pipeline than the pipeline itself is in that dtype, and no element
further than 1.25 times the pipeline's worst (the pipeline keeps its latents in the low dtype between steps,
fieldkit keeps them in float32, so the two low-dtype runs are compared through the float32 one; fieldkit's
mean error is 0.4-0.9 of the pipeline's, its worst element 0.2-1.02 of the pipeline's worst: a bound on the
worst element alone fails by rounding on some CPUs), and the field equal to the bit to every transformer
call of the low-dtype pipeline at its own states (the bound alone lets a cast differ by less than the
pipeline's own error). The large cells are marked slow.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fieldkit_sd3.field import SD3Field

from fieldkit import Cond, Guidance, euler_sample
from fieldkit.testing import assert_follows_pipeline, recorded_calls

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: FlowMatchEulerDiscreteScheduler options over the tiny pipeline's shift-3 scheduler.
SCHEDULERS = {
    "static": {},
    "dynamic": {"use_dynamic_shifting": True},
    "shift_terminal": {"shift_terminal": 0.1},
    "karras": {"use_karras_sigmas": True},
    "exponential": {"use_exponential_sigmas": True},
    "beta": {"use_beta_sigmas": True},
}
#: (prompts of unequal lengths, latent [C, H, W]): square, and non-square with three prompts.
BATCHES = {
    "square": (["a red cat", "two dogs on a hill at dusk"], (4, 8, 8)),
    "wide": (["a", "two dogs on a hill at dusk", "red fox"], (4, 4, 8)),
}
#: Every option a cell sets (each cell starts from the pipeline's scheduler without them).
OPTIONS = {key for options in SCHEDULERS.values() for key in options}
STEPS = 7
FAST = {
    ("float32", 1.0, "static", "wide"),
    ("float32", 3.5, "dynamic", "wide"),
    ("bfloat16", 3.5, "static", "wide"),
}


def cells() -> list[object]:
    out = []
    for dtype, w, sched, batch in itertools.product(DTYPES, (1.0, 3.5), SCHEDULERS, BATCHES):
        marks = () if (dtype, w, sched, batch) in FAST else (pytest.mark.slow,)
        out.append(pytest.param(dtype, w, sched, batch, marks=marks, id=f"{dtype}-w{w}-{sched}-{batch}"))
    return out


@pytest.fixture(scope="module")
def pipes(tiny: Path) -> Callable[[str], Any]:
    """dtype -> the tiny pipeline in it, loaded once when first asked."""
    from diffusers import StableDiffusion3Pipeline

    @functools.cache
    def load(name: str) -> Any:
        return StableDiffusion3Pipeline.from_pretrained(str(tiny / "sd3"), vae=None, dtype=DTYPES[name])

    return load


def pipeline_latents(pipe, embeds: tuple[torch.Tensor, ...], noise: torch.Tensor, w: float, sched: str):
    from diffusers import FlowMatchEulerDiscreteScheduler

    base = {k: v for k, v in pipe.scheduler.config.items() if k not in OPTIONS}  # the tiny pipeline's own
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(base, **SCHEDULERS[sched])
    dtype = pipe.transformer.dtype
    text, null_text, pooled, null_pooled = (e.to(dtype) for e in embeds)
    return pipe(
        prompt_embeds=text,
        negative_prompt_embeds=null_text,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=null_pooled,
        guidance_scale=w,
        num_inference_steps=STEPS,
        latents=noise.to(dtype),
        height=noise.shape[-2] * 8,
        width=noise.shape[-1] * 8,
        output_type="latent",
        max_sequence_length=16,
    ).images.float()


@pytest.mark.parametrize(("dtype", "w", "sched", "batch"), cells())
def test_fieldkit_matches_the_pipeline(pipes, dtype: str, w: float, sched: str, batch: str) -> None:
    if sched == "beta":
        pytest.importorskip("scipy", reason="diffusers' beta sigmas need scipy")
    prompts, shape = BATCHES[batch]
    reference = pipes("float32")
    with torch.no_grad():
        embeds = reference.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=True, max_sequence_length=16
        )
    noise = torch.randn(len(prompts), *shape, generator=torch.Generator().manual_seed(3))
    with recorded_calls(pipes(dtype).transformer) as calls:
        want = pipeline_latents(pipes(dtype), embeds, noise, w, sched)

    text, null_text, pooled, null_pooled = embeds
    field = SD3Field(pipes(dtype).transformer, scheduler=dict(pipes(dtype).scheduler.config))
    cond = Cond(text=text, pooled=pooled, nulls={"text": null_text[:1], "pooled": null_pooled[:1]})
    with torch.inference_mode():
        sigmas = field.sampling_sigmas(STEPS, shape)
        got = euler_sample(Guidance(field, w), noise.clone(), cond, sigmas).final
    assert sigmas is not None and torch.equal(sigmas, pipes(dtype).scheduler.sigmas)
    assert want.abs().max() > 1  # not two near-zero tensors
    if dtype == "float32":
        assert (got - want).abs().max() <= 1e-5
    else:
        exact = pipeline_latents(reference, embeds, noise, w, sched)
        ours, theirs = (got - exact).abs(), (want - exact).abs()
        assert ours.mean() <= theirs.mean() and ours.max() <= 1.25 * theirs.max()
        # the pipeline's call a step: [negative, prompt] in one batch with CFG
        assert_follows_pipeline(field, calls, sigmas, [Cond.cat([cond.uncond(), cond]) if w > 1 else cond])
