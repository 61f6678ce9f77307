"""Memory of SD3 / SD3.5 in fieldkit: parameter counts of the real configs (counted on the meta device, no
weights needed) and what sharing one base between LoRA teachers saves; measured bytes on tiny models.

    .venv/bin/python benchmarks/sd3_memory.py [--rank 64] [--adapters 2]

Prints the tables of docs/sd3.md. Parameter counts are exact for the configs below (those published with
the models); GiB figures are parameter bytes only, not activations.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from pathlib import Path

import torch
from torch import nn

GIB = 1024**3

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


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_params(model: nn.Module, rank: int, targets: tuple[str, ...]) -> int:
    """``r (in + out)`` over every Linear whose name ends with a target (what peft adapts)."""
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    )


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
    from fieldkit_sd3.loading import load_transformer
    from fieldkit_sd3.tiny import make_tiny_lora, make_tiny_pipeline

    from fieldkit.models.adapters import parameter_bytes

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tiny_pipeline(root / "sd3")
        base = SD3Field(load_transformer(root / "sd3"))
        fields = [base]
        for i in range(adapters):
            make_tiny_lora(root / "sd3", root / f"lora{i}", seed=i)
            fields.append(base.with_adapter(root / f"lora{i}", f"lora{i}"))
        shared = parameter_bytes(nn.ModuleList(fields))
        copies = parameter_bytes(nn.ModuleList(copy.deepcopy(f) for f in fields))
    return shared, copies


def main(argv: list[str] | None = None) -> None:
    from diffusers import SD3Transformer2DModel
    from fieldkit_sd3.field import LORA_TARGETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=64, help="LoRA rank of teachers and student")
    parser.add_argument("--adapters", type=int, default=2, help="LoRA teachers over one base")
    parser.add_argument("--config", type=Path, help="also count a local transformer/config.json")
    args = parser.parse_args(argv)
    n = args.adapters
    configs = dict(CONFIGS)
    if args.config is not None:
        configs[str(args.config)] = dict(SD3Transformer2DModel.load_config(str(args.config.parent)))

    print(
        f"| transformer | parameters | bf16 GiB | LoRA r={args.rank} parameters "
        f"| base + {n} LoRA teachers, GiB | {n} merged copies + base, GiB | saved |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, config in configs.items():
        with torch.device("meta"):
            model = SD3Transformer2DModel.from_config(config)
        params, lora = count(model), lora_params(model, args.rank, LORA_TARGETS)
        shared = (params + n * lora) * 2 / GIB
        copies = (n + 1) * params * 2 / GIB
        print(
            f"| {name} | {params / 1e9:.2f} B | {params * 2 / GIB:.1f} | {lora / 1e6:.1f} M | {shared:.1f} "
            f"| {copies:.1f} | {copies - shared:.1f} GiB |"
        )
    print()
    print("| text encoder | parameters | bf16 GiB |")
    print("|---|---|---|")
    for name, params in text_encoders().items():
        print(f"| {name} | {params / 1e9:.2f} B | {params * 2 / GIB:.1f} |")
    print()
    shared, copies = measured_tiny(n)
    print(
        f"measured, tiny SD3.5 (fieldkit_sd3.tiny), base + {n} LoRA fields: {shared:,} bytes shared "
        f"vs {copies:,} bytes as {n + 1} copies ({1 - shared / copies:.0%} saved)"
    )


if __name__ == "__main__":
    main()
