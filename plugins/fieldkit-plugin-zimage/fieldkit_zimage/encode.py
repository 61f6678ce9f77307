"""The Z-Image pipelines' own encoders, loaded without the transformer: prompt features, image latents and
SigLIP2 features exactly as ``ZImagePipeline`` / ``ZImageOmniPipeline`` compute them before sampling.

Prompts go through the pipeline's ``encode_prompt`` (Qwen3 ``hidden_states[-2]``, padding removed; for an
edit the three segments around one image). Images go through the Omni pipeline's own preprocessing, its
``prepare_image_latents`` (the VAE runs in bfloat16, as the pipeline requires) and ``prepare_siglip_embeds``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fieldkit.plugin_api import FieldkitError

#: Images up to this many pixels are used as they are (larger ones are resized down, as the pipeline does).
MAX_AREA = 1024 * 1024


def load_encoders(folder: Path, *, edit: bool, dtype: torch.dtype, device: torch.device) -> Any:
    """The pipeline of ``folder`` without its transformer (and, for prompts alone, without its VAE)."""
    from diffusers import AutoencoderKL, ZImageOmniPipeline, ZImagePipeline

    if not (folder / "model_index.json").is_file():
        raise FieldkitError(
            f"no Z-Image pipeline folder at {folder} (model_index.json missing)",
            hint="point `pipeline` at a ZImagePipeline or ZImageOmniPipeline folder",
        )
    if not edit:
        pipe = ZImagePipeline.from_pretrained(
            str(folder), transformer=None, vae=None, dtype=dtype, local_files_only=True
        )
        return pipe.to(device)
    vae = AutoencoderKL.from_pretrained(
        str(folder), subfolder="vae", dtype=torch.bfloat16, local_files_only=True
    )
    pipe = ZImageOmniPipeline.from_pretrained(
        str(folder), transformer=None, vae=vae, dtype=dtype, local_files_only=True
    )
    return pipe.to(device)


@torch.inference_mode()
def prompt_features(
    pipe: Any, texts: list[str], *, max_sequence_length: int, edit: bool
) -> list[list[Tensor]]:
    """Each text's segment features (1 segment for T2I, 3 around one image for an edit), on the CPU."""
    if edit:
        out = pipe.encode_prompt(
            list(texts),
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
            num_condition_images=1,
        )[0]
    else:
        out = [
            [f]
            for f in pipe.encode_prompt(
                list(texts), do_classifier_free_guidance=False, max_sequence_length=max_sequence_length
            )[0]
        ]
    return [[seg.detach().cpu() for seg in segs] for segs in out]


@torch.inference_mode()
def image_latent(pipe: Any, image: Any) -> Tensor:
    """The VAE latent ``[C, H, W]`` of a PIL image, as ``ZImageOmniPipeline`` encodes its condition image:
    its own preprocessing (sizes above 1024 x 1024 pixels resized down, a crop to a multiple of 16) and
    ``prepare_image_latents`` (a bfloat16 VAE; ``(mode - shift) * scale``)."""
    processor = pipe.image_processor
    processor.check_image_input(image)
    width, height = image.size
    if width * height > MAX_AREA:
        image = processor._resize_to_target_area(image, MAX_AREA)
        width, height = image.size
    multiple = pipe.vae_scale_factor * 2
    pixels = processor.preprocess(
        image, height=height // multiple * multiple, width=width // multiple * multiple, resize_mode="crop"
    )
    latent: Tensor = pipe.prepare_image_latents([pixels], 1, pipe._execution_device, torch.float32)[0][0]
    return latent.squeeze(1).cpu()


@torch.inference_mode()
def image_siglip(pipe: Any, image: Any) -> Tensor:
    """The SigLIP2 features ``[h, w, F]`` of a PIL image, as ``ZImageOmniPipeline.prepare_siglip_embeds``
    computes them (from the image as given, resized down only above 1024 x 1024 pixels)."""
    width, height = image.size
    if width * height > MAX_AREA:
        image = pipe.image_processor._resize_to_target_area(image, MAX_AREA)
    features: Tensor = pipe.prepare_siglip_embeds([image], 1, pipe._execution_device, torch.float32)[0][0]
    return features.float().cpu()
