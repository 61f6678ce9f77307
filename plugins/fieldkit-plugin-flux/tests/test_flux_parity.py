"""Parity: fieldkit's FLUX field, the guidance operator and the Euler sampler reproduce FluxPipeline and
FluxKontextPipeline (output_type="latent") on tiny random models: non-square latents, a batch of two
different prompts, with and without true CFG, to 1e-5 in float32; in bfloat16 no further from the float32
pipeline than the pipeline's own bfloat16 run, and the field equal to the bit to every transformer call of
the bfloat16 pipeline at its own states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fieldkit_flux.encode import image_latent, prompt_features
from fieldkit_flux.field import FluxField, text_cond

from fieldkit import euler_sample
from fieldkit.backbones.loading import scheduler_config
from fieldkit.backbones.packing import pack, unpack
from fieldkit.ops.guidance import Guidance
from fieldkit.testing import assert_follows_pipeline, recorded_calls

PROMPTS = ["a red cat", "two dogs on a hill at dusk, oil painting"]
INSTRUCTIONS = ["make it blue", "add a small hat to the dog"]
NEGATIVE = "blurry"
STEPS = 3
LENGTH = 24  # T5 tokens (the pipelines' max_sequence_length)
H, W = 8, 12  # latent size: 64 x 96 pixels
#: (distilled guidance, true CFG scale)
CELLS = [(3.5, 1.0), (2.0, 2.5)]


def noise(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, H, W, generator=torch.Generator().manual_seed(seed))


def load(folder: Path, dtype: torch.dtype = torch.float32):
    from diffusers import FluxKontextPipeline, FluxPipeline

    cls = FluxKontextPipeline if "kontext" in folder.name else FluxPipeline
    return cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True)


def features(pipe, texts: list[str]):
    text, pooled = prompt_features(pipe, texts, max_sequence_length=LENGTH)
    null_text, null_pooled = prompt_features(pipe, [NEGATIVE], max_sequence_length=LENGTH)
    return text, pooled, null_text, null_pooled


def pipeline_latents(pipe, feats, x, guidance: float, cfg: float, **call) -> torch.Tensor:
    text, pooled, null_text, null_pooled = feats
    n = text.shape[0]
    dtype = pipe.transformer.dtype
    out = pipe(
        prompt_embeds=text.to(dtype),
        pooled_prompt_embeds=pooled.to(dtype),
        negative_prompt_embeds=null_text.expand(n, -1, -1).to(dtype),
        negative_pooled_prompt_embeds=null_pooled.expand(n, -1).to(dtype),
        true_cfg_scale=cfg,
        guidance_scale=guidance,
        latents=pack(x).to(dtype),
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        max_sequence_length=LENGTH,
        output_type="latent",
        **call,
    ).images
    return unpack(out.float(), H, W)


def fieldkit_latents(pipe, folder, feats, x, guidance: float, cfg: float, **extra) -> torch.Tensor:
    field = FluxField(pipe.transformer, guidance=guidance, scheduler=scheduler_config(folder))
    cond = text_cond(*feats, **extra)
    with torch.inference_mode():
        return euler_sample(Guidance(field, cfg), x, cond, sampling_sigmas(field)).final


def sampling_sigmas(field: FluxField) -> torch.Tensor:
    """The field's (the pipeline's) sigmas for the tests' latents."""
    sigmas = field.sampling_sigmas(STEPS, (16, H, W))
    assert sigmas is not None
    return sigmas


@pytest.mark.parametrize(("guidance", "cfg"), CELLS)
@pytest.mark.parametrize("name", ["t2i", "schnell"])
def test_t2i_matches_flux_pipeline(tiny: Path, name: str, guidance: float, cfg: float) -> None:
    pipe = load(tiny / name)
    x = noise(0)
    feats = features(pipe, PROMPTS)
    want = pipeline_latents(pipe, feats, x, guidance, cfg)
    got = fieldkit_latents(pipe, tiny / name, feats, x, guidance, cfg)
    assert (got - x).abs().max() > 0.1  # the sampler moved
    assert (got - want).abs().max() <= 1e-5


def sources(pipe, make_image) -> tuple[list, torch.Tensor]:
    images = [make_image(1), make_image(2)]
    return images, torch.stack([image_latent(pipe, im, auto_resize=False) for im in images])


def kontext_call(images: list) -> dict:
    """The Kontext pipeline's arguments that keep the source image and the output at their given sizes."""
    return {"image": images, "_auto_resize": False, "max_area": H * W * 64}


@pytest.mark.parametrize(("guidance", "cfg"), CELLS)
def test_kontext_matches_flux_kontext_pipeline(tiny: Path, make_image, guidance: float, cfg: float) -> None:
    pipe = load(tiny / "kontext")
    images, source = sources(pipe, make_image)
    x = noise(1)
    feats = features(pipe, INSTRUCTIONS)
    want = pipeline_latents(pipe, feats, x, guidance, cfg, **kontext_call(images))
    got = fieldkit_latents(pipe, tiny / "kontext", feats, x, guidance, cfg, source=source)
    assert (got - x).abs().max() > 0.1
    assert (got - want).abs().max() <= 1e-5
    # the source image conditions the result
    other = fieldkit_latents(pipe, tiny / "kontext", feats, x, guidance, cfg, source=source.flip(0))
    assert (other - got).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["t2i", "kontext"])
def test_bfloat16_is_no_further_from_float32_than_the_pipelines_own(
    tiny: Path, make_image, name: str
) -> None:
    """The pipeline in bfloat16 (latents stepped in bfloat16) and fieldkit's field over the same bfloat16
    transformer (stepped in float32), both against the float32 pipeline, with true CFG.

    The bound is loose (fieldkit keeps its Euler state and the CFG sum in float32, the pipeline rounds both
    to bfloat16: the two bfloat16 runs differ by 0.7 to 1.3 times the pipeline's own bfloat16 error), so
    the cell also replays the bfloat16 pipeline's transformer calls: at the pipeline's own states and
    inputs (a Kontext source from its bfloat16 VAE) the field's velocity equals the transformer's to the
    bit (measured 0 on every call where the bfloat16 and float32 velocities differ by 0.02 to 0.09; a
    timestep rounded as ``sigma`` instead of ``1000 sigma`` gives 0.05 to 0.09 and passes the bound)."""
    guidance, cfg = CELLS[1]
    pipe, half = load(tiny / name), load(tiny / name, torch.bfloat16)
    texts, extra, half_extra, call = PROMPTS, {}, {}, {}
    if name == "kontext":
        images, source = sources(pipe, make_image)
        texts, extra, call = INSTRUCTIONS, {"source": source}, kontext_call(images)
        half_extra = {"source": sources(half, make_image)[1]}
    feats = features(pipe, texts)
    x = noise(2)
    want = pipeline_latents(pipe, feats, x, guidance, cfg, **call)
    with recorded_calls(half.transformer) as calls:
        pipeline_error = (pipeline_latents(half, feats, x, guidance, cfg, **call) - want).abs().max()
    got = fieldkit_latents(half, tiny / name, feats, x, guidance, cfg, **extra)
    assert 0 < (got - want).abs().max() <= pipeline_error
    field = FluxField(half.transformer, guidance=guidance, scheduler=scheduler_config(tiny / name))
    cond = text_cond(*feats, **half_extra)
    assert_follows_pipeline(field, calls, sampling_sigmas(field), [cond, cond.uncond()], (H, W))
