"""The FLUX pipelines' own encoders, loaded without the transformer: prompt features and Kontext source
latents exactly as ``FluxPipeline`` / ``FluxKontextPipeline`` compute them before sampling.

Prompts go through the pipeline's ``encode_prompt`` (T5 last hidden states padded to
``max_sequence_length``; CLIP's pooled output). Images go through the Kontext pipeline's own preprocessing
(with ``auto_resize``, its resize to the preferred Kontext resolution of the nearest aspect ratio; a crop to a
multiple of 16 pixels) and its VAE encoding (the mode, ``(z - shift) * scale``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fieldkit.plugin_api import FieldkitError


def load_encoders(folder: Path, *, edit: bool, dtype: torch.dtype, device: torch.device) -> Any:
    """The pipeline of ``folder`` without its transformer (and, for prompts alone, without its VAE)."""
    from diffusers import AutoencoderKL, FluxKontextPipeline, FluxPipeline

    if not (folder / "model_index.json").is_file():
        raise FieldkitError(
            f"no FLUX pipeline folder at {folder} (model_index.json missing)",
            hint="point `pipeline` at a FluxPipeline or FluxKontextPipeline folder",
        )
    if not edit:
        pipe = FluxPipeline.from_pretrained(
            str(folder), transformer=None, vae=None, dtype=dtype, local_files_only=True
        )
        return pipe.to(device)
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", dtype=dtype, local_files_only=True)
    pipe = FluxKontextPipeline.from_pretrained(
        str(folder), transformer=None, vae=vae, dtype=dtype, local_files_only=True
    )
    return pipe.to(device)


@torch.inference_mode()
def prompt_features(pipe: Any, texts: list[str], *, max_sequence_length: int) -> tuple[Tensor, Tensor]:
    """``(text [N, max_sequence_length, D], pooled [N, P])`` of ``texts``, on the CPU."""
    text, pooled, _ = pipe.encode_prompt(
        prompt=list(texts), prompt_2=None, max_sequence_length=max_sequence_length
    )
    return text.detach().cpu(), pooled.detach().cpu()


def source_size(pipe: Any, image: Any, auto_resize: bool) -> tuple[int, int]:
    """The ``(width, height)`` in pixels that ``FluxKontextPipeline`` encodes ``image`` at."""
    from diffusers.pipelines.flux.pipeline_flux_kontext import PREFERRED_KONTEXT_RESOLUTIONS

    multiple = pipe.vae_scale_factor * 2
    width, height = image.size
    if auto_resize:
        ratio = width / height
        _, width, height = min((abs(ratio - w / h), w, h) for w, h in PREFERRED_KONTEXT_RESOLUTIONS)
    return width // multiple * multiple, height // multiple * multiple


@torch.inference_mode()
def image_latent(pipe: Any, image: Any, *, auto_resize: bool = True) -> Tensor:
    """The VAE latent ``[C, H, W]`` of a PIL image as ``FluxKontextPipeline`` conditions on it."""
    processor = pipe.image_processor
    width, height = source_size(pipe, image, auto_resize)
    pixels = processor.preprocess(processor.resize(image, height, width), height, width)
    pixels = pixels.to(device=pipe._execution_device, dtype=pipe.vae.dtype)
    latent: Tensor = pipe._encode_vae_image(image=pixels, generator=None)[0]
    return latent.float().cpu()
