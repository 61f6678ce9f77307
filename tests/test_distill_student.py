"""LoRA students roll out with merged adapters: the same velocities, the base weights left exactly as they
were, and layers whose merge would change what they compute left alone."""

from __future__ import annotations

import contextlib

import pytest
import torch

from fieldkit.cond import Cond
from fieldkit.data import Batch
from fieldkit.distill import methods
from fieldkit.distill.methods import DistillMethod
from fieldkit.flow import sigma_schedule
from fieldkit.graph.schema import LoraSpec
from fieldkit.models.lora import add_lora, merged_lora
from fieldkit.models.mmdit import MMDiT, MMDiTConfig
from fieldkit.protocols import LossInputs
from fieldkit.training_params import DistillParams

CONFIG = MMDiTConfig(sample_size=(4, 4), patch_size=2, hidden=16, depth=2, heads=2, text_dim=8, pooled_dim=8)


def lora_student(dropout: float = 0.0, seed: int = 0) -> MMDiT:
    torch.manual_seed(seed)
    model = MMDiT(CONFIG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    add_lora(model, LoraSpec(rank=2, dropout=dropout))
    with torch.no_grad():  # B = 0 at start: give the adapters something to merge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model.train()


def inputs(batch: int = 3):
    g = torch.Generator().manual_seed(1)
    cond = Cond(text=torch.randn(batch, 5, 8, generator=g), pooled=torch.randn(batch, 8, generator=g))
    return torch.randn(batch, 1, 4, 4, generator=g), torch.rand(batch, generator=g), cond


def lora_calls(model: torch.nn.Module) -> list[int]:
    calls = [0]
    for name, m in model.named_modules():
        if name.endswith("lora_A.default"):
            m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_merged_rollout_forward_matches_and_skips_the_adapter_matmuls():
    model = lora_student()
    x, sigma, cond = inputs()
    calls = lora_calls(model)
    with torch.inference_mode():
        want = model(x, sigma, cond)
        plain_calls = calls[0]
        with merged_lora(model):
            got = model(x, sigma, cond)
    assert plain_calls > 0 and calls[0] == plain_calls  # no adapter call inside the block
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_base_weights_and_trainability_are_restored_exactly():
    model = lora_student()
    before = {n: (p, p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}
    x, sigma, cond = inputs()
    with torch.inference_mode(), merged_lora(model):
        model(x, sigma, cond)
    after = dict(model.named_parameters())
    assert after.keys() == before.keys()
    for name, (param, value, grad) in before.items():
        assert after[name] is param, name  # the same parameter objects (the optimizer holds them)
        assert torch.equal(param, value) and param.requires_grad == grad, name
    assert not any(getattr(m, "merged", False) for m in model.modules())
    model(x, sigma, cond).square().mean().backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_" in n)


def test_active_dropout_is_not_merged():
    model = lora_student(dropout=0.5)
    calls = lora_calls(model)
    x, sigma, cond = inputs()
    with torch.no_grad(), merged_lora(model):
        model(x, sigma, cond)
    assert calls[0] > 0


def test_danceopd_loss_is_the_same_with_and_without_the_merge(monkeypatch):
    student = lora_student()
    teacher = lora_student(seed=3).eval()
    _, _, cond = inputs(4)
    batch, sigmas = Batch(cond), sigma_schedule(8, 3.0)
    method = DistillMethod(DistillParams(k=2))

    def loss():
        g = torch.Generator().manual_seed(0)
        return method.loss(LossInputs(student, student, teacher, batch, (1, 4, 4), sigmas, g))

    merged = loss()
    monkeypatch.setattr(methods, "merged_lora", lambda model: contextlib.nullcontext(model))
    plain = loss()
    assert merged.rollout_nfe == plain.rollout_nfe > 0
    torch.testing.assert_close(merged.loss, plain.loss, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("train", [True, False])
def test_a_model_without_lora_is_untouched(train):
    model = MMDiT(CONFIG).train(train)
    with merged_lora(model) as same:
        assert same is model


def test_the_merge_is_computed_in_the_weights_dtype_under_autocast():
    model = lora_student()
    layer = next(m for n, m in model.named_modules() if n.endswith("qkv") and hasattr(m, "lora_A"))
    base = layer.get_base_layer()
    with torch.no_grad():
        want = base.weight + layer.get_delta_weight("default")
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16), merged_lora(model):
        assert base.weight.dtype == torch.float32
        assert torch.equal(base.weight, want)
