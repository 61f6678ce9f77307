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
#: The bfloat16 cells: (pipeline, true CFG scale); the edit with CFG is slow (about 6 s), as in float32.
BFLOAT16_CELLS = [("t2i", CFG[1]), ("edit", CFG[0]), pytest.param("edit", CFG[1], marks=pytest.mark.slow)]


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


def edit_latents(pipe, images: list, x, cfg: float) -> torch.Tensor:
    """The edit pipeline's final latents, ``INSTRUCTIONS[i]`` on ``images[i]`` from ``x[i]``: one call per
    image, what a user does (a list of images is shown to Qwen2.5-VL unresized)."""
    rows = zip(INSTRUCTIONS, images, x.split(1), strict=True)
    return torch.cat([pipeline_latents(pipe, [text], row, cfg, image=im) for text, im, row in rows])


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
    want = edit_latents(pipe, images, x, cfg)
    got = fieldkit_latents(pipe, tiny / "edit", cond, x, cfg)
    assert (got - x).abs().max() > 0.1
    assert (got - want).abs().max() <= 1e-5


@pytest.mark.parametrize(("name", "cfg"), BFLOAT16_CELLS)
def test_bfloat16_is_no_further_from_float32_than_the_pipelines_own(
    tiny: Path, request: pytest.FixtureRequest, name: str, cfg: float
) -> None:
    """The pipeline in bfloat16 (its encoders, transformer and latents in bfloat16) and fieldkit's field over
    the same bfloat16 transformer (features and source latents from the float32 encoders, stepped in
    float32), both against the float32 pipeline.

    The bound has no slack (factor 1, as FLUX's T2I and Kontext cells): fieldkit rounds to bfloat16 only at
    the transformer's inputs and inside it, where the pipeline rounds too, and keeps the guidance, its norm
    rescale and the Euler steps in float32; a slack would hide a cast that differs from the pipeline's."""
    half = load_pipeline(tiny / name, edit=name == "edit", dtype=torch.bfloat16)
    x = noise(2)
    if name == "edit":
        pipe, images, cond = request.getfixturevalue("edit_inputs")
        want, pipeline_half = (edit_latents(p, images, x, cfg) for p in (pipe, half))
    else:
        pipe = load_pipeline(tiny / name, edit=False)
        cond = t2i_cond(pipe)
        want, pipeline_half = (pipeline_latents(p, PROMPTS, x, cfg) for p in (pipe, half))
    got = fieldkit_latents(half, tiny / name, cond, x, cfg)
    assert 0 < (got - want).abs().max() <= (pipeline_half - want).abs().max()
