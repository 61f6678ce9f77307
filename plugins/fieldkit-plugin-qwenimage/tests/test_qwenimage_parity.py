"""Parity: fieldkit's Qwen-Image field, its guidance operator and the Euler sampler reproduce
QwenImagePipeline and QwenImageEditPipeline (output_type="latent") on tiny random models: non-square
latents, two prompts of different lengths (masked text), with and without true CFG and its norm rescale, to
1e-5 in float32; in bfloat16 no further from the float32 pipeline than the pipeline's own bfloat16 run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fieldkit_qwenimage.encode import edit_image, image_latent, load_pipeline, prompt_features
from fieldkit_qwenimage.field import QwenImageField, text_cond
from fieldkit_qwenimage.guidance import QwenImageGuidance

from fieldkit import Cond, euler_sample
from fieldkit.backbones.loading import scheduler_config
from fieldkit.backbones.packing import pack, unpack

PROMPTS = ["a red cat", "two dogs on a hill at dusk, oil painting"]
INSTRUCTIONS = ["make it blue", "add a small hat to the dog"]
NEGATIVE = "blurry"
STEPS = 3
H, W = 8, 12  # latent size: 64 x 96 pixels
CFG = [1.0, 4.0]


def noise(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, H, W, generator=torch.Generator().manual_seed(seed))


def pipeline_latents(pipe, texts, x, cfg: float, **call) -> torch.Tensor:
    """The pipeline's final latents from prompts ``texts`` (against the negative prompt) and noise ``x``."""
    out = pipe(
        prompt=texts,
        negative_prompt=[NEGATIVE] * len(texts),
        true_cfg_scale=cfg,
        latents=pack(x).to(pipe.transformer.dtype),
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        output_type="latent",
        **call,
    ).images
    return unpack(out.float(), H, W)


def fieldkit_latents(pipe, folder: Path, cond: Cond, x, cfg: float) -> torch.Tensor:
    field = QwenImageField(pipe.transformer, scheduler=scheduler_config(folder))
    sigmas = field.sampling_sigmas(STEPS, tuple(x.shape[1:]))
    with torch.inference_mode():
        return euler_sample(QwenImageGuidance(field, cfg), x, cond, sigmas).final


def t2i_cond(pipe) -> Cond:
    return text_cond(prompt_features(pipe, PROMPTS), prompt_features(pipe, [NEGATIVE])[0])


@pytest.fixture(scope="module")
def edit_inputs(tiny: Path, make_image):
    """The edit pipeline, its two source images, and their Cond as the plugin's encoders compute it."""
    pipe = load_pipeline(tiny / "edit", edit=True)
    images = [make_image(1), make_image(2)]
    resized = [edit_image(pipe, im) for im in images]
    segs = prompt_features(pipe, INSTRUCTIONS, images=resized)
    negative = prompt_features(pipe, [NEGATIVE] * 2, images=resized)
    source = torch.stack([image_latent(pipe, im) for im in resized])
    return pipe, images, text_cond(segs, negative, source=source)


@pytest.mark.parametrize("cfg", CFG)
def test_t2i_matches_qwenimage_pipeline(tiny: Path, cfg: float) -> None:
    pipe = load_pipeline(tiny / "t2i", edit=False)
    x = noise(0)
    want = pipeline_latents(pipe, PROMPTS, x, cfg)
    got = fieldkit_latents(pipe, tiny / "t2i", t2i_cond(pipe), x, cfg)
    assert (got - x).abs().max() > 0.1  # the sampler moved
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize("cfg", [CFG[0], pytest.param(CFG[1], marks=pytest.mark.slow)])
def test_edit_matches_qwenimage_edit_pipeline(tiny: Path, edit_inputs, cfg: float) -> None:
    pipe, images, cond = edit_inputs
    x = noise(1)
    # one call per image: what a user does (a list of images is shown to Qwen2.5-VL unresized)
    rows = zip(INSTRUCTIONS, images, x.split(1), strict=True)
    want = torch.cat([pipeline_latents(pipe, [text], row, cfg, image=im) for text, im, row in rows])
    got = fieldkit_latents(pipe, tiny / "edit", cond, x, cfg)
    assert (got - x).abs().max() > 0.1
    assert (got - want).abs().max() <= 1e-5


def test_bfloat16_is_no_further_from_float32_than_the_pipelines_own(tiny: Path) -> None:
    """The pipeline in bfloat16 (latents stepped in bfloat16) and fieldkit's field over the same bfloat16
    transformer (stepped in float32), both against the float32 pipeline, with true CFG."""
    pipe, half = (
        load_pipeline(tiny / "t2i", edit=False),
        load_pipeline(tiny / "t2i", edit=False, dtype=torch.bfloat16),
    )
    x = noise(2)
    want = pipeline_latents(pipe, PROMPTS, x, CFG[1])
    pipeline_error = (pipeline_latents(half, PROMPTS, x, CFG[1]) - want).abs().max()
    got = fieldkit_latents(half, tiny / "t2i", t2i_cond(pipe), x, CFG[1])
    assert 0 < (got - want).abs().max() <= pipeline_error
