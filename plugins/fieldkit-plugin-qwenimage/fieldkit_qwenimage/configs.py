"""The released Qwen-Image models' configs, as their folders publish them: what the memory report counts on
the meta device (no weights needed; ``benchmarks/qwenimage_memory.py``, docs/qwenimage.md)."""

from __future__ import annotations

from typing import Any

#: ``transformer/config.json`` of Qwen-Image (Qwen-Image-Edit's is the same).
QWEN_IMAGE: dict[str, Any] = {
    "patch_size": 2,
    "in_channels": 64,
    "out_channels": 16,
    "num_layers": 60,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 3584,
    "guidance_embeds": False,
    "axes_dims_rope": [16, 56, 56],
}
TRANSFORMERS = {"Qwen-Image / Qwen-Image-Edit": QWEN_IMAGE}


def encoder_parameters() -> dict[str, int]:
    """Parameters of Qwen2.5-VL-7B-Instruct (the text encoder, with its vision tower for edits) and the
    Qwen-Image VAE, counted on the meta device from their published configs."""
    import torch
    from diffusers import AutoencoderKLQwenImage
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": 152064,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "tie_word_embeddings": False,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
        },
        vision_config={
            "depth": 32,
            "hidden_size": 1280,
            "intermediate_size": 3420,
            "num_heads": 16,
            "out_hidden_size": 3584,
            "fullatt_block_indexes": [7, 15, 23, 31],
        },
    )
    with torch.device("meta"):
        text = Qwen2_5_VLForConditionalGeneration(config)
        vision = sum(p.numel() for p in text.model.visual.parameters())
        return {
            "Qwen2.5-VL-7B text encoder (language model)": sum(p.numel() for p in text.parameters()) - vision,
            "Qwen2.5-VL-7B vision tower (edits)": vision,
            "VAE (AutoencoderKLQwenImage)": sum(p.numel() for p in AutoencoderKLQwenImage().parameters()),
        }
