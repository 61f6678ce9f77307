"""Parity: fieldkit's FLUX field, the guidance operator and the Euler sampler reproduce FluxPipeline and
FluxKontextPipeline (output_type="latent") on tiny random models: non-square latents, a batch of two
different prompts, with and without true CFG, to 1e-5 in float32; in bfloat16 no further from the float32
pipeline than the pipeline's own bfloat16 run."""

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
    sigmas = field.sampling_sigmas(STEPS, tuple(x.shape[1:]))
    with torch.inference_mode():
        return euler_sample(Guidance(field, cfg), x, cond, sigmas).final


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
    transformer (stepped in float32), both against the float32 pipeline, with true CFG."""
    guidance, cfg = CELLS[1]
    pipe, half = load(tiny / name), load(tiny / name, torch.bfloat16)
    texts, extra, call = PROMPTS, {}, {}
    if name == "kontext":
        images, source = sources(pipe, make_image)
        texts, extra, call = INSTRUCTIONS, {"source": source}, kontext_call(images)
    feats = features(pipe, texts)
    x = noise(2)
    want = pipeline_latents(pipe, feats, x, guidance, cfg, **call)
    pipeline_error = (pipeline_latents(half, feats, x, guidance, cfg, **call) - want).abs().max()
    got = fieldkit_latents(half, tiny / name, feats, x, guidance, cfg, **extra)
    assert 0 < (got - want).abs().max() <= pipeline_error
