"""Fixtures of the Z-Image plugin's tests: tiny random pipelines built from configs (no hub), their
encoders, and the plugin registered inline, never autoloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import fieldkit_zimage
import pytest

from fieldkit.testing import image_fixture, plugin_fixtures

zimage_plugin, _quiet_diffusers = plugin_fixtures(fieldkit_zimage, "zimage")
make_image = image_fixture((64, 64))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``t2i`` (tiny ZImagePipeline), ``omni`` (tiny ZImageOmniPipeline) and ``t2i-dynamic``
    (a ZImagePipeline whose scheduler shifts with the image size, as Omni's transformer)."""
    from fieldkit_zimage.tiny import make_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-zimage")
    make_tiny_pipeline(root / "t2i")
    make_tiny_pipeline(root / "omni", omni=True, seed=3)
    make_tiny_pipeline(root / "t2i-dynamic", omni=True, dynamic=True, seed=3)
    return root


@pytest.fixture(scope="session")
def t2i_pipe(tiny: Path):
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(str(tiny / "t2i"), local_files_only=True)


@pytest.fixture(scope="session")
def omni_pipe(tiny: Path):
    """The tiny Omni pipeline with its VAE in bfloat16 (its prepare_image_latents encodes bfloat16 images)."""
    import torch
    from diffusers import AutoencoderKL, ZImageOmniPipeline

    vae = AutoencoderKL.from_pretrained(
        str(tiny / "omni"), subfolder="vae", dtype=torch.bfloat16, local_files_only=True
    )
    return ZImageOmniPipeline.from_pretrained(str(tiny / "omni"), vae=vae, local_files_only=True)


def t2i_latents(pipe, segs, x, steps: int, **call):
    """``ZImagePipeline`` latents from prompt features ``segs`` (one segment each) and noise ``x``."""
    return pipe(
        prompt_embeds=[s[0] for s in segs],
        latents=x.clone(),
        height=64,
        width=64,
        num_inference_steps=steps,
        output_type="latent",
        **call,
    ).images


def edit_latents(pipe, images, instructions, x, steps: int, **call):
    """``ZImageOmniPipeline`` latents, one call per (image, instruction) from its row of noise ``x``."""
    import torch

    rows = [
        pipe(
            image=[image],
            prompt=instruction,
            latents=x[i : i + 1].clone(),
            num_inference_steps=steps,
            output_type="latent",
            max_sequence_length=64,
            **call,
        ).images
        for i, (image, instruction) in enumerate(zip(images, instructions, strict=True))
    ]
    return torch.cat(rows)


@pytest.fixture(scope="session")
def pipeline_latents() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(:func:`t2i_latents`, :func:`edit_latents`), for tests."""
    return t2i_latents, edit_latents
