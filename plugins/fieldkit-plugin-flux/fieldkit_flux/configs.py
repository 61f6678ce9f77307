"""The released FLUX.1 models' configs, as their folders publish them: what the memory report counts on the
meta device (no weights needed; ``benchmarks/flux_memory.py``, docs/flux.md)."""

from __future__ import annotations

from typing import Any

#: ``transformer/config.json`` of FLUX.1 [dev] (FLUX.1 Kontext [dev] has the same; [schnell] lacks the
#: guidance embedding).
FLUX_1_DEV: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": [16, 56, 56],
}
TRANSFORMERS = {
    "FLUX.1 [dev] / Kontext [dev]": FLUX_1_DEV,
    "FLUX.1 [schnell]": {**FLUX_1_DEV, "guidance_embeds": False},
}


def encoder_parameters() -> dict[str, int]:
    """Parameters of T5-XXL's encoder, CLIP-L's text model and the 16-channel VAE, counted on the meta
    device from their published configs."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    t5 = T5Config(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    clip = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        projection_dim=768,
    )
    with torch.device("meta"):
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
        )
        models = {
            "T5-XXL encoder (text_encoder_2)": T5EncoderModel(t5),
            "CLIP-L text model (text_encoder)": CLIPTextModel(clip),
            "VAE (16 channels)": vae,
        }
        return {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
