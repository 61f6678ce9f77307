"""Parity: fieldkit's Qwen-Image field, its guidance operator and the Euler sampler reproduce
QwenImagePipeline and QwenImageEditPipeline (output_type="latent") on tiny random models: non-square
latents, two prompts of different lengths (masked text), with and without true CFG and its norm rescale, to
1e-5 in float32; in bfloat16 no further from the float32 pipeline than the pipeline's own bfloat16 run, and
the field equal to the bit to every transformer call of the bfloat16 pipeline at its own states."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fieldkit_qwenimage.encode import edit_image, image_latent, load_pipeline, prompt_features
from fieldkit_qwenimage.field import QwenImageField, pad_text, text_cond
from fieldkit_qwenimage.guidance import QwenImageGuidance

from fieldkit import Cond, euler_sample
from fieldkit.backbones.loading import scheduler_config
from fieldkit.backbones.packing import pack, unpack
from fieldkit.testing import assert_follows_pipeline, recorded_calls

PROMPTS = ["a red cat", "two dogs on a hill at dusk, oil painting"]
INSTRUCTIONS = ["make it blue", "add a small hat to the dog"]
NEGATIVE = "blurry"
STEPS = 3
#: The bfloat16 cells' steps: the fourth puts sigma = 0.4287 on the grid, where rounding the timestep as
#: ``sigma`` (0.4297) and as ``1000 sigma`` (0.4277) differ; at 3 steps they agree on every sigma.
BFLOAT16_STEPS = 4
H, W = 8, 12  # latent size: 64 x 96 pixels
CFG = [1.0, 4.0]
#: The bfloat16 cells: (pipeline, true CFG scale); the edit with CFG is slow (about 6 s), as in float32.
BFLOAT16_CELLS = [("t2i", CFG[1]), ("edit", CFG[0]), pytest.param("edit", CFG[1], marks=pytest.mark.slow)]


def noise(seed: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 16, H, W, generator=torch.Generator().manual_seed(seed))


def pipeline_latents(pipe, texts, x, cfg: float, steps: int = STEPS, **call) -> torch.Tensor:
    """The pipeline's final latents from prompts ``texts`` (against the negative prompt) and noise ``x``."""
    out = pipe(
        prompt=texts,
        negative_prompt=[NEGATIVE] * len(texts),
        true_cfg_scale=cfg,
        latents=pack(x).to(pipe.transformer.dtype),
        height=H * 8,
        width=W * 8,
        num_inference_steps=steps,
        output_type="latent",
        **call,
    ).images
    return unpack(out.float(), H, W)


def fieldkit_latents(pipe, folder: Path, cond: Cond, x, cfg: float, steps: int = STEPS) -> torch.Tensor:
    field = QwenImageField(pipe.transformer, scheduler=scheduler_config(folder))
    sigmas = field.sampling_sigmas(steps, tuple(x.shape[1:]))
    with torch.inference_mode():
        return euler_sample(QwenImageGuidance(field, cfg), x, cond, sigmas).final


def call_cond(features: list[torch.Tensor], **extra: torch.Tensor) -> Cond:
    """The Cond of one of the pipeline's transformer calls: ``features`` padded to their longest, as the
    pipeline pads one ``encode_prompt`` batch (the prompt and the negative prompt are two)."""
    text, mask = pad_text(features)
    return Cond({"text": text, "text_mask": mask, **extra})


def edit_latents(pipe, images: list, x, cfg: float, steps: int = STEPS) -> torch.Tensor:
    """The edit pipeline's final latents, ``INSTRUCTIONS[i]`` on ``images[i]`` from ``x[i]``: one call per
    image, what a user does (a list of images is shown to Qwen2.5-VL unresized)."""
    rows = zip(INSTRUCTIONS, images, x.split(1), strict=True)
    return torch.cat([pipeline_latents(pipe, [text], row, cfg, steps, image=im) for text, im, row in rows])


def t2i_cond(pipe) -> Cond:
    return text_cond(prompt_features(pipe, PROMPTS), prompt_features(pipe, [NEGATIVE])[0])


def edit_encodings(pipe, images: list) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """``(instructions, negatives, sources)``: each image's instruction and negative prompt features (the
    image shown to Qwen2.5-VL) and its source latent, as the plugin's encoders compute them from ``pipe``,
    one image at a time as :func:`edit_latents` calls the pipeline (a batch would pad the shorter row)."""
    resized = [edit_image(pipe, im) for im in images]
    rows = list(zip(INSTRUCTIONS, resized, strict=True))
    segs = [prompt_features(pipe, [text], images=[im])[0] for text, im in rows]
    negative = [prompt_features(pipe, [NEGATIVE], images=[im])[0] for _, im in rows]
    return segs, negative, torch.stack([image_latent(pipe, im) for im in resized])


@pytest.fixture(scope="module")
def edit_inputs(tiny: Path, make_image):
    """The edit pipeline, its two source images, and their Cond as the plugin's encoders compute it."""
    pipe = load_pipeline(tiny / "edit", edit=True)
    images = [make_image(1), make_image(2)]
    segs, negative, source = edit_encodings(pipe, images)
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

    The bound has no slack (factor 1, as FLUX's T2I and Kontext cells) but is loose: fieldkit keeps the
    guidance, its norm rescale and the Euler steps in float32 where the pipeline rounds them to bfloat16,
    so the two bfloat16 runs differ by about the pipeline's own bfloat16 error, and a timestep rounded as
    ``sigma`` instead of ``1000 sigma`` passes it. So the cell also replays the bfloat16 pipeline's
    transformer calls: at the pipeline's own states and inputs (features and source latents from its
    bfloat16 encoders, padded as it pads them) the field's velocity equals the transformer's to the bit
    (measured 0 on every call, where the bfloat16 and float32 velocities differ by about 0.015)."""
    half = load_pipeline(tiny / name, edit=name == "edit", dtype=torch.bfloat16)
    x = noise(2)
    branches = 2 if cfg > 1 else 1  # the pipeline's transformer calls a step: the prompt, the negative
    if name == "edit":
        pipe, images, cond = request.getfixturevalue("edit_inputs")
        want = edit_latents(pipe, images, x, cfg, BFLOAT16_STEPS)
        with recorded_calls(half.transformer) as calls:
            pipeline_half = edit_latents(half, images, x, cfg, BFLOAT16_STEPS)
        segs, negative, source = edit_encodings(half, images)
        per_image = len(calls) // len(images)
        replays = []
        for row, (seg, neg) in enumerate(zip(segs, negative, strict=True)):
            extra = {"source": source[row : row + 1]}
            conds = [call_cond([seg], **extra), call_cond([neg], **extra)]
            replays.append((calls[row * per_image : (row + 1) * per_image], conds))
    else:
        pipe = load_pipeline(tiny / name, edit=False)
        cond = t2i_cond(pipe)
        want = pipeline_latents(pipe, PROMPTS, x, cfg, BFLOAT16_STEPS)
        with recorded_calls(half.transformer) as calls:
            pipeline_half = pipeline_latents(half, PROMPTS, x, cfg, BFLOAT16_STEPS)
        negative = prompt_features(half, [NEGATIVE] * len(PROMPTS))
        replays = [(calls, [call_cond(prompt_features(half, PROMPTS)), call_cond(negative)])]
    got = fieldkit_latents(half, tiny / name, cond, x, cfg, BFLOAT16_STEPS)
    assert 0 < (got - want).abs().max() <= (pipeline_half - want).abs().max()
    field = QwenImageField(half.transformer, scheduler=scheduler_config(tiny / name))
    sigmas = field.sampling_sigmas(BFLOAT16_STEPS, tuple(x.shape[1:]))
    rounded = sigmas.to(torch.bfloat16) != (sigmas * 1000).to(torch.bfloat16) / 1000
    assert rounded.any()  # the grid tells a timestep rounded as sigma from one rounded as 1000 sigma
    for row_calls, conds in replays:
        assert_follows_pipeline(field, row_calls, sigmas, conds[:branches], (H, W))
