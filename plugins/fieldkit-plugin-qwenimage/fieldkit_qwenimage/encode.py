"""The Qwen-Image pipelines' own encoders, loaded without the transformer: prompt features and edit source
latents exactly as ``QwenImagePipeline`` / ``QwenImageEditPipeline`` compute them before sampling.

Prompts go through the pipeline's ``encode_prompt`` (Qwen2.5-VL's last hidden states after the template's
prefix, padding removed). For an edit, the source image is resized as the edit pipeline resizes it (to about
one megapixel at its aspect ratio, sides multiples of 32), shown to Qwen2.5-VL with the instruction (and with
the negative prompt: an edit's negative features depend on its image), and VAE-encoded (the mode, normalised
by the VAE's per-channel mean and std).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fieldkit.plugin_api import FieldkitError

#: The pixel area the edit pipeline resizes every source image to.
EDIT_AREA = 1024 * 1024


def load_pipeline(folder: Path, *, edit: bool, dtype: torch.dtype = torch.float32, **parts: Any) -> Any:
    """``QwenImageEditPipeline`` (``edit``) or ``QwenImagePipeline`` from the local folder ``folder``, the
    edit pipeline with the plugin's processor (:mod:`fieldkit_qwenimage.processor`); ``parts`` replace
    components (``transformer=None`` leaves it out)."""
    from diffusers import QwenImageEditPipeline, QwenImagePipeline

    from fieldkit_qwenimage.processor import load_processor

    if not (folder / "model_index.json").is_file():
        raise FieldkitError(
            f"no Qwen-Image pipeline folder at {folder} (model_index.json missing)",
            hint="point `pipeline` at a QwenImagePipeline or QwenImageEditPipeline folder",
        )
    if not edit:
        return QwenImagePipeline.from_pretrained(str(folder), dtype=dtype, local_files_only=True, **parts)
    processor = load_processor(folder / "processor")
    return QwenImageEditPipeline.from_pretrained(
        str(folder), processor=processor, dtype=dtype, local_files_only=True, **parts
    )


def load_encoders(folder: Path, *, edit: bool, dtype: torch.dtype, device: torch.device) -> Any:
    """The pipeline of ``folder`` without its transformer (and, for prompts alone, without its VAE)."""
    parts: dict[str, Any] = {"transformer": None} if edit else {"transformer": None, "vae": None}
    return load_pipeline(folder, edit=edit, dtype=dtype, **parts).to(device)


def _trimmed(embeds: Tensor, mask: Tensor | None) -> list[Tensor]:
    if mask is None:
        return [row.detach().cpu() for row in embeds]
    return [row[: int(m.sum())].detach().cpu() for row, m in zip(embeds, mask, strict=True)]


def edit_image(pipe: Any, image: Any) -> Any:
    """``image`` resized as ``QwenImageEditPipeline`` resizes its condition image (about one megapixel)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit import calculate_dimensions

    width, height, _ = calculate_dimensions(EDIT_AREA, image.size[0] / image.size[1])
    return pipe.image_processor.resize(image, height, width)


@torch.inference_mode()
def prompt_features(
    pipe: Any, texts: list[str], *, max_sequence_length: int = 512, images: list[Any] | None = None
) -> list[Tensor]:
    """Each text's features ``[L_i, D]`` on the CPU; for an edit (``images``: the resized source of each
    text, :func:`edit_image`) with its image shown to Qwen2.5-VL, as the edit pipeline called with that one
    image shows it (called with a list of images, the pipeline shows them unresized)."""
    if images is None:
        embeds, mask = pipe.encode_prompt(prompt=list(texts), max_sequence_length=max_sequence_length)
    else:
        embeds, mask = pipe.encode_prompt(prompt=list(texts), image=list(images))
    return _trimmed(embeds, mask)


@torch.inference_mode()
def image_latent(pipe: Any, resized: Any) -> Tensor:
    """The VAE latent ``[C, H, W]`` of a resized source image (:func:`edit_image`), as
    ``QwenImageEditPipeline`` encodes its condition image."""
    width, height = resized.size
    pixels = pipe.image_processor.preprocess(resized, height, width).unsqueeze(2)
    pixels = pixels.to(device=pipe._execution_device, dtype=pipe.vae.dtype)
    latent: Tensor = pipe._encode_vae_image(image=pixels, generator=None)[0, :, 0].float().cpu()
    return latent
