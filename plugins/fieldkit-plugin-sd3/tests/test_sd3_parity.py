"""fieldkit's Euler sampling of ``guidance(sd3, w)`` reproduces ``StableDiffusion3Pipeline`` latents."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fieldkit_sd3.attention import use_fieldkit_attention
from fieldkit_sd3.field import SD3Field

from fieldkit import Cond, Guidance, euler_sample
from fieldkit.backbones.schedule import scheduler_sigmas

TOLERANCE = 1e-5  # measured: 7e-7 on latents of magnitude ~5 (float32, CPU)


@pytest.mark.parametrize("folder", ["sd3", "sd3-v1"])
@pytest.mark.parametrize("w", [1.0, 4.5])
@pytest.mark.parametrize("processor", ["fieldkit", "stock"])
def test_euler_of_guided_field_matches_the_pipeline(
    tiny: Path, folder: str, w: float, processor: str
) -> None:
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny / folder), vae=None, local_files_only=True)
    text, null_text, pooled, null_pooled = pipe.encode_prompt(
        ["a red cat", "two dogs on a hill"],
        None,
        None,
        do_classifier_free_guidance=True,
        max_sequence_length=16,
    )
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    steps = 6
    expected = pipe(
        prompt_embeds=text,
        negative_prompt_embeds=null_text,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=null_pooled,
        guidance_scale=w,
        num_inference_steps=steps,
        latents=noise.clone(),
        output_type="latent",
        max_sequence_length=16,
    ).images

    transformer = SD3Field.load_transformer(tiny / folder)
    if processor == "fieldkit":
        use_fieldkit_attention(transformer)
    cond = Cond(text=text, pooled=pooled, nulls={"text": null_text[:1], "pooled": null_pooled[:1]})
    sigmas = scheduler_sigmas(tiny / folder, steps)
    with torch.inference_mode():
        got = euler_sample(Guidance(SD3Field(transformer), w), noise.clone(), cond, sigmas).final
    assert (got - expected).abs().max() < TOLERANCE
    assert expected.abs().max() > 1  # the comparison is not between two near-zero tensors


def test_scheduler_sigmas_are_the_schedulers_own(tiny: Path) -> None:
    """The shifted schedule ends at 1 / 1000 shifted, then 0 (not fieldkit's linspace to 0)."""
    sigmas = scheduler_sigmas(tiny / "sd3", 4)
    expected = torch.tensor([1000.0, 858.0, 602.0, 9.0, 0.0]) / 1000  # NOTES.md: shift 3, 4 steps
    torch.testing.assert_close(sigmas, expected, rtol=0, atol=1e-3)
