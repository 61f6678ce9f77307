"""LoRA on fieldkit's MMDiT with the default targets (every linear layer, named in full) and with the
digits recipes' targets (which add the patch embedding, a convolution)."""

from __future__ import annotations

import torch

from fieldkit import Cond
from fieldkit.graph.schema import LoraSpec
from fieldkit.models import MMDiT, MMDiTConfig
from fieldkit.models.lora import add_lora, lora_targets

RECIPE_TARGETS = [
    "qkv",
    "proj",
    "modulation",
    "mlp.0",
    "mlp.2",
    "text_embed",
    "time_embed.0",
    "time_embed.2",
    "pooled_embed.0",
    "pooled_embed.2",
    "modulation_out",
    "proj_out",
    "patch_embed",
]


def _model() -> MMDiT:
    torch.manual_seed(0)
    return MMDiT(MMDiTConfig(hidden=16, depth=2, heads=2, use_source=True, frequency_dim=16))


def test_default_targets_name_linear_layers_in_full():
    model = _model()
    targets = lora_targets(model)
    assert "blocks.0" not in targets and "blocks.0.image.mlp.0" in targets
    add_lora(model, LoraSpec(rank=2))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_recipe_targets_adapt_the_patch_embedding():
    model = add_lora(_model(), LoraSpec(rank=2, targets=RECIPE_TARGETS))
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("patch_embed.lora_") for n in names)
    x = torch.randn(2, 1, 8, 16)
    cond = Cond(source=torch.randn(2, 1, 8, 16), pooled=torch.randn(2, 384))
    assert model(x, torch.rand(2), cond).shape == x.shape
