"""Tiny Qwen-Image pipelines built from configs, for tests and the CPU example: no hub, no real weights.

:func:`make_tiny_pipeline` writes a folder that ``QwenImagePipeline.from_pretrained`` (T2I) or
``QwenImageEditPipeline.from_pretrained`` (edit, ``edit=True``) loads: a tiny ``QwenImageTransformer2DModel``
(2 heads of 16, 2 blocks), a tiny ``AutoencoderKLQwenImage`` (16 latent channels, 8x down, the released
per-channel mean and std), a tiny Qwen2.5-VL (``Qwen2_5_VLForConditionalGeneration``: a 2-layer text model of
width 32 with multimodal rotary positions and a 1-block vision tower on 14-pixel patches) with a byte-level
tokenizer that knows the Qwen chat and vision tokens, for the edit model its ``Qwen2VLProcessor`` (PIL image
processor, images resized to at most 56 x 56 pixels there), and a flow-matching scheduler with Qwen-Image's
dynamic shift (its sequence bounds scaled down to tiny latents). The real vocabulary cannot be fetched
offline; everything else is the real diffusers and transformers code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

LATENT_CHANNELS = 16
TEXT_WIDTH = 32
#: The tokens Qwen-Image's prompt templates and Qwen2.5-VL's processor use (Qwen's own spelling).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
PATCH = 14
VISION_PIXELS = 56 * 56


def transformer_config() -> dict[str, Any]:
    """A Qwen-Image transformer of width 32 (2 heads of 16), 2 blocks, text width 32."""
    return {
        "patch_size": 2,
        "in_channels": 4 * LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": TEXT_WIDTH,
        "axes_dims_rope": [4, 6, 6],
    }


def scheduler_config() -> dict[str, Any]:
    """Qwen-Image's scheduler (dynamic exponential shift, 0.5 to 0.9, terminal 0.02) with its sequence bounds
    scaled down to tiny latents (16 to 256 tokens)."""
    return {
        "shift": 1.0,
        "use_dynamic_shifting": True,
        "time_shift_type": "exponential",
        "base_shift": 0.5,
        "max_shift": 0.9,
        "base_image_seq_len": 16,
        "max_image_seq_len": 256,
        "shift_terminal": 0.02,
    }


def text_encoder(tok: Any) -> Any:
    """A tiny Qwen2.5-VL: 2 text layers of width 32 (multimodal rotary sections 2, 3, 3), one vision block."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = {name: tok.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": PATCH,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "out_hidden_size": TEXT_WIDTH,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def processor(tok: Any) -> Any:
    """Qwen2.5-VL's processor over ``tok``: the PIL image processor on 14-pixel patches, merged 2 x 2, images
    resized to between 28 x 28 and 56 x 56 pixels."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from fieldkit_qwenimage.processor import ImageTextProcessor

    images = Qwen2VLImageProcessorPil(
        patch_size=PATCH, merge_size=2, temporal_patch_size=2, min_pixels=28 * 28, max_pixels=VISION_PIXELS
    )
    return ImageTextProcessor(images, tok)


def vae() -> Any:
    """A tiny AutoencoderKLQwenImage (8x down: three spatial downsamplings, no residual blocks in the
    encoder, 4 channels wide) with 16 latent channels: the edit pipeline encodes every source image at about
    one megapixel, and this keeps that near a second on a CPU."""
    from diffusers import AutoencoderKLQwenImage

    return AutoencoderKLQwenImage(
        base_dim=4, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=0
    ).eval()


def make_tiny_pipeline(folder: Path, *, edit: bool = False, seed: int = 0) -> Path:
    """Write a tiny random ``QwenImagePipeline`` (``QwenImageEditPipeline`` with ``edit``) folder."""
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline, QwenImagePipeline

    from fieldkit.backbones.tiny import qwen_byte_tokenizer
    from fieldkit_qwenimage.field import QwenImageField

    tok = qwen_byte_tokenizer(SPECIAL_TOKENS, 32768)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        parts: dict[str, Any] = {
            "transformer": QwenImageField.build_transformer(transformer_config(), seed),
            "scheduler": FlowMatchEulerDiscreteScheduler(**scheduler_config()),
            "vae": vae(),
            "text_encoder": text_encoder(tok),
            "tokenizer": tok,
        }
    if edit:
        parts["processor"] = processor(tok)
    pipe = (QwenImageEditPipeline if edit else QwenImagePipeline)(**parts)
    pipe.save_pretrained(str(folder))
    if edit:
        from fieldkit_qwenimage.processor import save_processor

        save_processor(parts["processor"], folder)
    return folder


def make_tiny_lora(pipeline: Path, out: Path, *, rank: int = 4, seed: int = 0, std: float = 0.05) -> Path:
    """Write a random LoRA (diffusers / peft format, ``B != 0``) of the tiny pipeline's transformer on the
    default targets: a stand-in for a style or edit LoRA trained elsewhere."""
    from fieldkit.plugin_api import random_lora
    from fieldkit_qwenimage.field import LORA_TARGETS, QwenImageField

    transformer = QwenImageField.load_transformer(pipeline)
    return random_lora(transformer, LORA_TARGETS, out, rank=rank, seed=seed, std=std)
