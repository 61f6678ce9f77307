"""The parity matrix: fieldkit's Z-Image field, guidance operator and Euler sampler against ZImagePipeline
and ZImageOmniPipeline (``output_type="latent"``) over dtype x guidance x scheduler x batch / latent shape x
T2I / edit.

Every cell takes its features (text, VAE latents, SigLIP) from the pipeline of its dtype, so both sides see
the same inputs. Tolerances: float32, 1e-5. bfloat16 / float16: the pipeline's own difference from the
float32 pipeline (fieldkit and the pipeline in the low dtype differ by no more than the low dtype moves the
pipeline). The large cells are marked slow.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fieldkit_zimage.encode import image_latent, image_siglip, prompt_features
from fieldkit_zimage.field import ZImageField, text_cond
from fieldkit_zimage.guidance import ZImageGuidance

from fieldkit import euler_sample

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: (guidance_scale, cfg_normalization, cfg_truncation): off; plain CFG; CFG capped and truncated.
GUIDANCE = {"off": (0.0, 0.0, 1.0), "cfg": (2.5, 0.0, 1.0), "capped": (4.0, 1.05, 0.5)}
SCHEDULERS = {"static": {}, "dynamic": {"use_dynamic_shifting": True}}
#: (instructions / prompts of unequal lengths, latent [C, H, W]).
BATCHES = {
    "square": (["a red cat", "two dogs on a hill at dusk"], (16, 8, 8)),
    "wide": (["a", "two dogs on a hill at dusk", "make it blue"], (16, 8, 16)),  # Omni: images >= 64 px
}
STEPS = 6
FAST = {
    ("float32", "cfg", "dynamic", "wide", "t2i"),
    ("float32", "capped", "static", "wide", "edit"),
    ("bfloat16", "cfg", "static", "wide", "t2i"),
}


def cells() -> list[object]:
    out = []
    for key in itertools.product(DTYPES, GUIDANCE, SCHEDULERS, BATCHES, ("t2i", "edit")):
        marks = () if key in FAST else (pytest.mark.slow,)
        out.append(pytest.param(*key, marks=marks, id="-".join(key)))
    return out


@pytest.fixture(scope="module")
def pipes(tiny: Path) -> Callable[[str, str], Any]:
    """``(dtype, task)`` -> pipeline, loaded once when first asked; the Omni VAE stays bfloat16 (diffusers
    encodes edit images so)."""
    from diffusers import AutoencoderKL, ZImageOmniPipeline, ZImagePipeline

    @functools.cache
    def load(name: str, task: str) -> Any:
        if task == "t2i":
            return ZImagePipeline.from_pretrained(str(tiny / "t2i"), dtype=DTYPES[name])
        vae = AutoencoderKL.from_pretrained(str(tiny / "omni"), subfolder="vae", dtype=torch.bfloat16)
        return ZImageOmniPipeline.from_pretrained(str(tiny / "omni"), vae=vae, dtype=DTYPES[name])

    return load


def run_pipeline(pipe, task: str, texts, images, x, guidance: str, negative):
    scale, norm, trunc = GUIDANCE[guidance]
    call = dict(
        num_inference_steps=STEPS,
        output_type="latent",
        guidance_scale=scale,
        cfg_normalization=norm,
        cfg_truncation=trunc,
    )
    if task == "t2i":
        return pipe(
            prompt_embeds=[s[0] for s in texts],
            negative_prompt_embeds=[negative[0]] * len(texts),
            latents=x.clone(),
            height=x.shape[-2] * 8,
            width=x.shape[-1] * 8,
            **call,
        ).images.float()
    rows = [  # the Omni pipeline takes one (image, instruction) per call
        pipe(image=[image], prompt=text, latents=x[i : i + 1].clone(), max_sequence_length=64, **call).images
        for i, (image, text) in enumerate(zip(images, texts, strict=True))
    ]
    return torch.cat(rows).float()


def fieldkit_latents(pipe, task, texts, images, x, guidance):
    edit = task == "edit"
    segs = prompt_features(pipe, texts, max_sequence_length=64, edit=edit)
    negative = prompt_features(pipe, [""], max_sequence_length=64, edit=edit)[0]
    extra = {}
    if edit:
        extra["source"] = torch.stack([image_latent(pipe, image) for image in images]).float()
        extra["siglip"] = torch.stack([image_siglip(pipe, image) for image in images]).float()
    cond = text_cond([[s.float() for s in seg] for seg in segs], [s.float() for s in negative], **extra)
    field = ZImageField(pipe.transformer, scheduler=dict(pipe.scheduler.config))
    with torch.inference_mode():
        sigmas = field.sampling_sigmas(STEPS, tuple(x.shape[1:]))
        got = euler_sample(ZImageGuidance(field, *GUIDANCE[guidance]), x.clone(), cond, sigmas).final
    return got, segs, negative


@pytest.mark.parametrize(("dtype", "guidance", "sched", "batch", "task"), cells())
def test_fieldkit_matches_the_pipeline(pipes, make_image, dtype, guidance, sched, batch, task) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    texts, shape = BATCHES[batch]
    images = [make_image(i, (shape[-1] * 8, shape[-2] * 8)) for i in range(len(texts))]
    x = torch.randn(len(texts), *shape, generator=torch.Generator().manual_seed(4))

    def latents(name: str) -> tuple[torch.Tensor, torch.Tensor]:
        pipe = pipes(name, task)
        base = {k: v for k, v in pipe.scheduler.config.items() if k not in SCHEDULERS["dynamic"]}
        pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(base, **SCHEDULERS[sched])
        got, segs, negative = fieldkit_latents(pipe, task, texts, images, x, guidance)
        given = segs if task == "t2i" else texts
        return got, run_pipeline(pipe, task, given, images, x, guidance, negative)

    got, want = latents(dtype)
    assert (want - x).abs().max() > 0.1  # the sampler moved
    if dtype == "float32":
        assert (got - want).abs().max() <= 1e-5
    else:
        _, exact = latents("float32")
        assert (got - want).abs().max() <= (want - exact).abs().max()
