"""Tiny Z-Image pipelines built from configs, for tests and the CPU example: no hub, no real weights.

:func:`make_tiny_pipeline` writes a folder that ``ZImagePipeline.from_pretrained`` (T2I) or
``ZImageOmniPipeline.from_pretrained`` (edit, ``omni=True``) loads: a tiny ``ZImageTransformer2DModel``
(dim 64, 2 layers, 1 refiner layer; SigLIP input for Omni), a tiny ``AutoencoderKL`` (16 latent channels,
8x down, so a 64 x 64 image, the smallest Omni accepts, has an 8 x 8 latent), a tiny ``Qwen3Model`` text
encoder with a byte-level tokenizer that knows the Qwen chat tokens and a minimal chat template, a
flow-matching scheduler with shift 3 and, for Omni, a tiny ``Siglip2VisionModel`` with its image processor.
The real vocabularies cannot be fetched offline; everything else is the real diffusers and transformers code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

LATENT_CHANNELS = 16
TEXT_WIDTH = 32
SIGLIP_WIDTH = 32
SIGLIP_PATCH = 4
SIGLIP_PATCHES = 16
#: The tokens Z-Image's prompts and chat template use (Qwen3's own spelling).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def transformer_config(omni: bool = False) -> dict[str, Any]:
    """A 2-layer Z-Image transformer of width 64 (2 heads of 32), text width 32, SigLIP width 32 for Omni."""
    config: dict[str, Any] = {
        "all_patch_size": (2,),
        "all_f_patch_size": (1,),
        "in_channels": LATENT_CHANNELS,
        "dim": 64,
        "n_layers": 2,
        "n_refiner_layers": 1,
        "n_heads": 2,
        "n_kv_heads": 2,
        "cap_feat_dim": TEXT_WIDTH,
        "axes_dims": [8, 12, 12],
        "axes_lens": [256, 64, 64],
    }
    if omni:
        config["siglip_feat_dim"] = SIGLIP_WIDTH
    return config


def scheduler_config(dynamic: bool = False) -> dict[str, Any]:
    """Z-Image's scheduler: shift 3, static; ``dynamic`` turns on resolution-dependent shifting instead."""
    if dynamic:
        return {
            "shift": 1.0,
            "use_dynamic_shifting": True,
            "base_image_seq_len": 16,
            "max_image_seq_len": 256,
        }
    return {"shift": 3.0, "use_dynamic_shifting": False}


def text_encoder(vocab_size: int) -> Any:
    """A 2-layer Qwen3 of width 32 (the pipelines read its second-to-last hidden states)."""
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=512,
    )
    return Qwen3Model(config).eval()


def siglip() -> tuple[Any, Any]:
    """A 1-layer SigLIP2 vision model of width 32 on 4-pixel patches (16 of them) and its image processor."""
    from transformers import Siglip2VisionConfig, Siglip2VisionModel
    from transformers.models.siglip2.image_processing_pil_siglip2 import Siglip2ImageProcessorPil

    config = Siglip2VisionConfig(
        hidden_size=SIGLIP_WIDTH,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_patches=SIGLIP_PATCHES,
        patch_size=SIGLIP_PATCH,
    )
    processor = Siglip2ImageProcessorPil(patch_size=SIGLIP_PATCH, max_num_patches=SIGLIP_PATCHES)
    return Siglip2VisionModel(config).eval(), processor


def make_tiny_pipeline(folder: Path, *, omni: bool = False, dynamic: bool = False, seed: int = 0) -> Path:
    """Write a tiny random ``ZImagePipeline`` (or ``ZImageOmniPipeline`` with ``omni``) folder; return it."""
    from diffusers import FlowMatchEulerDiscreteScheduler, ZImageOmniPipeline, ZImagePipeline

    from fieldkit.backbones.tiny import flux_vae, qwen_byte_tokenizer
    from fieldkit_zimage.field import ZImageField

    tok = qwen_byte_tokenizer(SPECIAL_TOKENS, 512)
    tok.chat_template = CHAT_TEMPLATE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        parts: dict[str, Any] = {
            "transformer": ZImageField.build_transformer(transformer_config(omni), seed=seed),
            "scheduler": FlowMatchEulerDiscreteScheduler(**scheduler_config(dynamic)),
            "vae": flux_vae(),
            "text_encoder": text_encoder(len(tok)),
            "tokenizer": tok,
        }
        if omni:
            parts["siglip"], parts["siglip_processor"] = siglip()
    pipe = (ZImageOmniPipeline if omni else ZImagePipeline)(**parts)
    pipe.save_pretrained(str(folder))
    return folder


def make_tiny_lora(pipeline: Path, out: Path, *, rank: int = 4, seed: int = 0, std: float = 0.05) -> Path:
    """Write a random LoRA (diffusers / peft format, ``B != 0``) of the tiny pipeline's transformer on the
    paper's targets: a stand-in for an edit or realism LoRA trained elsewhere."""
    from fieldkit.plugin_api import random_lora
    from fieldkit_zimage.field import LORA_TARGETS, ZImageField

    return random_lora(
        ZImageField.load_transformer(pipeline), LORA_TARGETS, out, rank=rank, seed=seed, std=std
    )
