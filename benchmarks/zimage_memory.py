"""Memory of Z-Image in fieldkit: parameter counts of the real configs (counted on the meta device, no weights
needed), what sharing one base between LoRA teachers saves, and measured bytes on the tiny models.

    .venv/bin/python benchmarks/zimage_memory.py [--rank 128] [--adapters 2] [--config PATH/config.json]

Prints the tables of docs/zimage.md. The configs are those of the released model folders as far as they are
known here (count your own with --config); GiB figures are parameter bytes only, not activations.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fieldkit.backbones.memory import count, report, shared_and_copied_bytes

Z_IMAGE = {
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "cap_feat_dim": 2560,
}
CONFIGS = {
    "Z-Image (T2I)": Z_IMAGE,
    "Z-Image Omni (SigLIP input)": {**Z_IMAGE, "siglip_feat_dim": 1152, "axes_lens": [1536, 512, 512]},
}


def encoders() -> dict[str, int]:
    """Qwen3-4B (the text encoder, no LM head), SigLIP2 so400m (vision) and the 16-channel Flux-style VAE."""
    from diffusers import AutoencoderKL
    from transformers import Qwen3Config, Qwen3Model, Siglip2VisionConfig, Siglip2VisionModel

    qwen = Qwen3Config(
        vocab_size=151936,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        tie_word_embeddings=True,
    )
    siglip = Siglip2VisionConfig(
        hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, patch_size=16
    )
    with torch.device("meta"):
        vae = AutoencoderKL(
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=16,
        )
        return {
            "Qwen3-4B text encoder": count(Qwen3Model(qwen)),
            "SigLIP2 so400m vision (Omni)": count(Siglip2VisionModel(siglip)),
            "VAE (16 channels)": count(vae),
        }


def measured_tiny(adapters: int) -> tuple[int, int]:
    """Parameter bytes of the tiny Omni base with ``adapters`` LoRA fields over it, and of as many copies."""
    from fieldkit_zimage.field import ZImageField
    from fieldkit_zimage.tiny import make_tiny_lora, make_tiny_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        root = make_tiny_pipeline(Path(tmp) / "omni", omni=True)
        loras = [make_tiny_lora(root, Path(tmp) / f"lora{i}", seed=i) for i in range(adapters)]
        return shared_and_copied_bytes(ZImageField(ZImageField.load_transformer(root)), loras)


def main(argv: list[str] | None = None) -> None:
    from fieldkit_zimage.field import LORA_TARGETS

    report(
        argv,
        description=__doc__.splitlines()[0],
        model_class="ZImageTransformer2DModel",
        configs=CONFIGS,
        targets=LORA_TARGETS,
        default_rank=128,
        encoders=encoders,
        measured=measured_tiny,
        label="tiny Z-Image Omni (fieldkit_zimage.tiny)",
    )


if __name__ == "__main__":
    main()
