"""Memory of SD3 / SD3.5 in fieldkit: parameter counts of the real configs (counted on the meta device, no
weights needed) and what sharing one base between LoRA teachers saves; measured bytes on tiny models.

    .venv/bin/python benchmarks/sd3_memory.py [--rank 64] [--adapters 2]

Prints the tables of docs/sd3.md. Parameter counts are exact for the configs below (those published with
the models); GiB figures are parameter bytes only, not activations.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fieldkit.backbones.memory import count, report, shared_and_copied_bytes

SD3_MEDIUM = {
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
}
CONFIGS = {
    "SD3 Medium": SD3_MEDIUM,
    "SD3.5 Medium": {
        **SD3_MEDIUM,
        "pos_embed_max_size": 384,
        "qk_norm": "rms_norm",
        "dual_attention_layers": tuple(range(13)),
    },
    "SD3.5 Large": {
        **SD3_MEDIUM,
        "num_layers": 38,
        "num_attention_heads": 38,
        "caption_projection_dim": 2432,
        "qk_norm": "rms_norm",
    },
}


def text_encoders() -> dict[str, int]:
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    clip_l = CLIPTextConfig(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        projection_dim=768,
    )
    clip_g = CLIPTextConfig(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
    )
    t5 = T5Config(
        vocab_size=32128,
        d_model=4096,
        d_kv=64,
        d_ff=10240,
        num_layers=24,
        num_heads=64,
        feed_forward_proj="gated-gelu",
    )
    with torch.device("meta"):
        return {
            "CLIP-L": count(CLIPTextModelWithProjection(clip_l)),
            "CLIP-G": count(CLIPTextModelWithProjection(clip_g)),
            "T5-XXL encoder": count(T5EncoderModel(t5)),
        }


def measured_tiny(adapters: int) -> tuple[int, int]:
    """Parameter bytes of a tiny base with ``adapters`` LoRA fields over it, and of as many full copies."""
    from fieldkit_sd3.field import SD3Field
    from fieldkit_sd3.tiny import make_tiny_lora, make_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tiny_pipeline(root / "sd3")
        loras = [make_tiny_lora(root / "sd3", root / f"lora{i}", seed=i) for i in range(adapters)]
        return shared_and_copied_bytes(SD3Field(SD3Field.load_transformer(root / "sd3")), loras)


def main(argv: list[str] | None = None) -> None:
    from fieldkit_sd3.field import LORA_TARGETS

    report(
        argv,
        description=__doc__.splitlines()[0],
        model_class="SD3Transformer2DModel",
        configs=CONFIGS,
        targets=LORA_TARGETS,
        default_rank=64,
        encoders=text_encoders,
        measured=measured_tiny,
        label="tiny SD3.5 (fieldkit_sd3.tiny)",
    )


if __name__ == "__main__":
    main()
