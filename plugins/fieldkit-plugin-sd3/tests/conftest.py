"""Fixtures of the SD3 plugin's tests: tiny random SD3 / SD3.5 models built from configs (no hub), and the
plugin registered inline, never autoloaded."""

from __future__ import annotations

from pathlib import Path

import fieldkit_sd3
import pytest
import torch

from fieldkit.cond import Cond
from fieldkit.testing import plugin_fixtures

sd3_plugin, _quiet_diffusers = plugin_fixtures(fieldkit_sd3, "sd3")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``sd3`` (tiny SD3.5 pipeline), ``sd3-v1`` (tiny SD3 pipeline, no dual attention) and two
    random LoRAs ``lora-a``, ``lora-b`` for the SD3.5 transformer."""
    from fieldkit_sd3.tiny import make_tiny_lora, make_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-sd3")
    make_tiny_pipeline(root / "sd3", sd35=True)
    make_tiny_pipeline(root / "sd3-v1", sd35=False, seed=5)
    make_tiny_lora(root / "sd3", root / "lora-a", seed=1, std=0.1)
    make_tiny_lora(root / "sd3", root / "lora-b", seed=2, std=0.1)
    return root


@pytest.fixture(scope="session")
def pipe(tiny: Path):
    """The tiny SD3.5 pipeline (no VAE: latents only)."""
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline.from_pretrained(str(tiny / "sd3"), vae=None, local_files_only=True)


@pytest.fixture(scope="session")
def prompt_cond(pipe) -> Cond:
    """Two prompts embedded by the tiny pipeline, with the empty prompt's embeddings as nulls."""
    with torch.no_grad():  # plain tensors, not attached to the text encoders' graph
        text, null_text, pooled, null_pooled = pipe.encode_prompt(
            ["a red cat", "two dogs on a hill"],
            None,
            None,
            do_classifier_free_guidance=True,
            max_sequence_length=16,
        )
    return Cond(text=text, pooled=pooled, nulls={"text": null_text[:1], "pooled": null_pooled[:1]})
