"""Parity: fieldkit's Z-Image field, guidance operator and Euler sampler reproduce ZImagePipeline and
ZImageOmniPipeline (output_type="latent") on tiny random models, to 1e-5 in float32."""

from __future__ import annotations

import pytest
import torch
from fieldkit_zimage.encode import image_latent, image_siglip, prompt_features
from fieldkit_zimage.field import ZImageField, text_cond
from fieldkit_zimage.guidance import ZImageGuidance

from fieldkit import euler_sample
from fieldkit.backbones.loading import scheduler_config

PROMPTS = ["a red cat", "two dogs on a hill at dusk"]
STEPS = 4
#: (guidance_scale, cfg_normalization, cfg_truncation): off; plain CFG; CFG capped and truncated.
GUIDANCE = [(0.0, 0.0, 1.0), (2.5, 0.0, 1.0), (4.0, 1.05, 0.5)]


def noise(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, 8, 8, generator=torch.Generator().manual_seed(seed))


def fieldkit_sample(pipe, cond, x, scale: float, norm: float, trunc: float, tiny_folder) -> torch.Tensor:
    field = ZImageField(pipe.transformer, scheduler=scheduler_config(tiny_folder))
    sigmas = field.sampling_sigmas(STEPS, tuple(x.shape[1:]))
    with torch.inference_mode():
        return euler_sample(ZImageGuidance(field, scale, norm, trunc), x, cond, sigmas).final


@pytest.mark.parametrize(("scale", "norm", "trunc"), GUIDANCE)
def test_t2i_matches_zimage_pipeline(
    tiny, t2i_pipe, pipeline_latents, scale: float, norm: float, trunc: float
) -> None:
    segs = prompt_features(t2i_pipe, PROMPTS, max_sequence_length=64, edit=False)
    negative = prompt_features(t2i_pipe, ["blurry"], max_sequence_length=64, edit=False)[0]
    x = noise(0)
    t2i_latents, _ = pipeline_latents
    negatives = [negative[0]] * len(PROMPTS)
    want = t2i_latents(
        t2i_pipe,
        segs,
        x,
        STEPS,
        negative_prompt_embeds=negatives,
        guidance_scale=scale,
        cfg_normalization=norm,
        cfg_truncation=trunc,
    )
    got = fieldkit_sample(t2i_pipe, text_cond(segs, negative), x, scale, norm, trunc, tiny / "t2i")
    assert (got - x).abs().max() > 0.1  # the sampler moved
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize(("scale", "norm", "trunc"), GUIDANCE)
def test_edit_matches_zimage_omni_pipeline(
    tiny, omni_pipe, make_image, pipeline_latents, scale: float, norm: float, trunc: float
) -> None:
    images = [make_image(1), make_image(2)]
    instructions = ["make it blue", "add a hat"]
    segs = prompt_features(omni_pipe, instructions, max_sequence_length=64, edit=True)
    negative = prompt_features(omni_pipe, [""], max_sequence_length=64, edit=True)[0]
    source = torch.stack([image_latent(omni_pipe, image) for image in images])
    siglip = torch.stack([image_siglip(omni_pipe, image) for image in images])
    x = noise(1)
    _, edit_latents = pipeline_latents
    want = edit_latents(
        omni_pipe,
        images,
        instructions,
        x,
        STEPS,
        guidance_scale=scale,
        cfg_normalization=norm,
        cfg_truncation=trunc,
    )
    cond = text_cond(segs, negative, source=source, siglip=siglip)
    got = fieldkit_sample(omni_pipe, cond, x, scale, norm, trunc, tiny / "omni")
    assert (got - x).abs().max() > 0.1
    assert (got - want).abs().max() <= 1e-5


def test_dynamic_shifting_matches_the_pipeline(tiny, pipeline_latents) -> None:
    """A scheduler with resolution-dependent shifting: the field's sampling_sigmas take mu from the latent
    size as the pipeline does (the sigmas and the latents match)."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(tiny / "t2i-dynamic"), local_files_only=True)
    segs = prompt_features(pipe, PROMPTS, max_sequence_length=64, edit=False)
    x = noise(2)
    want = pipeline_latents[0](pipe, segs, x, STEPS, guidance_scale=0.0)
    got = fieldkit_sample(pipe, text_cond(segs, segs[0]), x, 0.0, 0.0, 1.0, tiny / "t2i-dynamic")
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_bfloat16_matches_the_bfloat16_pipeline_with_t_in_float32(tiny, pipeline_latents, scale) -> None:
    """The pipelines run a bfloat16 transformer at ``t`` in float32. Six steps put ``t = 1/7`` on the grid,
    which bfloat16 rounds (``1000 t`` = 142.857 becomes 142): that moved the latents by ~1e-2.

    Equal to the bit (measured): Z-Image's pipelines keep their latents, the CFG sum and the steps in
    float32 as fieldkit does, so every cast the field makes is the pipeline's, and any other (``t``
    computed as ``1 - sigma`` rather than from ``1000 sigma``, or rounded to bfloat16) shows."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(tiny / "t2i"), dtype=torch.bfloat16, local_files_only=True)
    segs = prompt_features(pipe, PROMPTS, max_sequence_length=64, edit=False)
    negative = prompt_features(pipe, [""], max_sequence_length=64, edit=False)[0]
    x = noise(3)
    want = pipeline_latents[0](
        pipe, segs, x, 6, negative_prompt_embeds=[negative[0]] * len(PROMPTS), guidance_scale=scale
    )
    field = ZImageField(pipe.transformer, scheduler=scheduler_config(tiny / "t2i"))
    sigmas = field.sampling_sigmas(6, tuple(x.shape[1:]))
    with torch.inference_mode():
        got = euler_sample(ZImageGuidance(field, scale), x, text_cond(segs, negative), sigmas).final
    assert (got - x).abs().max() > 0.1
    assert torch.equal(got, want), f"{(got - want).abs().max():.3g} from the bfloat16 pipeline"
