"""fieldkit's attention processor on every SD3 attention layer, and gradient checkpointing."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fieldkit_sd3.attention import FieldkitJointAttnProcessor, use_fieldkit_attention
from fieldkit_sd3.field import SD3Field

from fieldkit import Cond
from fieldkit.attention import AttentionUnavailable, use_backend

X = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
SIGMA = torch.tensor([0.7, 0.2])


@pytest.mark.parametrize("folder", ["sd3", "sd3-v1"])
def test_processor_is_set_everywhere_and_matches_the_stock_one(
    tiny: Path, prompt_cond: Cond, folder: str
) -> None:
    stock = SD3Field.load_transformer(tiny / folder)
    ours = copy.deepcopy(stock)
    use_fieldkit_attention(ours)
    processors = ours.attn_processors
    joint = sum(1 for block in ours.transformer_blocks for a in (block.attn, block.attn2) if a is not None)
    assert len(processors) == joint  # SD3.5's dual attention layers too
    assert all(isinstance(p, FieldkitJointAttnProcessor) for p in processors.values())
    with torch.inference_mode():
        want = SD3Field(stock)(X, SIGMA, prompt_cond)
        for backend in ("sdpa", "sdpa-math", "naive"):
            with use_backend(backend):
                got = SD3Field(ours)(X, SIGMA, prompt_cond)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("folder", ["sd3", "sd3-v1"])
def test_the_last_block_computes_no_text_queries_and_keeps_the_velocity_and_gradients(
    tiny: Path, prompt_cond: Cond, folder: str
) -> None:
    """The last joint block (``context_pre_only``) throws its text stream away: its text queries are never
    projected, the velocity is the stock processor's bit for bit, and the gradients are the stock ones (to
    float rounding: the key and value gradients now sum over fewer query rows)."""
    stock = SD3Field.load_transformer(tiny / folder)
    ours = copy.deepcopy(stock)
    use_fieldkit_attention(ours)
    last = ours.transformer_blocks[-1].attn
    assert last.context_pre_only and not ours.transformer_blocks[0].attn.context_pre_only
    called: dict[str, int] = {}
    for name, module in ours.named_modules():
        if name.endswith("add_q_proj"):
            called[name] = 0
            module.register_forward_hook(lambda *_, name=name: called.__setitem__(name, called[name] + 1))
    with torch.inference_mode():
        assert torch.equal(SD3Field(ours)(X, SIGMA, prompt_cond), SD3Field(stock)(X, SIGMA, prompt_cond))
    last_name = f"transformer_blocks.{len(ours.transformer_blocks) - 1}.attn"
    assert called.pop(f"{last_name}.add_q_proj") == 0 and called and all(n == 1 for n in called.values())
    for model in (stock, ours):
        SD3Field(model)(X, SIGMA, prompt_cond).square().mean().backward()
    theirs = dict(stock.named_parameters())
    for name, param in ours.named_parameters():
        if name.startswith((f"{last_name}.add_q_proj.", f"{last_name}.norm_added_q.")):
            # the text queries' projection (and SD3.5's norm of them): stock gives them zeros
            assert param.grad is None and not theirs[name].grad.any()
        else:
            torch.testing.assert_close(param.grad, theirs[name].grad, rtol=1e-5, atol=1e-9)


def test_the_processor_goes_through_fieldkits_dispatcher(tiny: Path, prompt_cond: Cond) -> None:
    """A backend that cannot run on CPU is refused by fieldkit: proof that the kernel is fieldkit's choice
    (SD3's stock processor calls SDPA directly and ignores it)."""
    stock, ours = SD3Field.load_transformer(tiny / "sd3"), SD3Field.load_transformer(tiny / "sd3")
    use_fieldkit_attention(ours)
    with torch.inference_mode(), use_backend("sdpa-efficient"):
        SD3Field(stock)(X, SIGMA, prompt_cond)
        with pytest.raises(AttentionUnavailable, match="sdpa-efficient"):
            SD3Field(ours)(X, SIGMA, prompt_cond)


def test_gradient_checkpointing_recomputes_blocks_and_keeps_the_gradients(
    tiny: Path, prompt_cond: Cond
) -> None:
    plain = SD3Field.load_transformer(tiny / "sd3").train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.enable_gradient_checkpointing()
    calls = {"plain": 0, "checkpointed": 0}
    grads = {}
    for name, model in (("plain", plain), ("checkpointed", checkpointed)):
        use_fieldkit_attention(model)

        def count(*_, name=name) -> None:
            calls[name] += 1

        for block in model.transformer_blocks:
            block.register_forward_pre_hook(count)  # recomputation stops early: no post-hook
        SD3Field(model)(X, SIGMA, prompt_cond).square().mean().backward()
        grads[name] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    blocks = len(plain.transformer_blocks)
    assert calls == {"plain": blocks, "checkpointed": 2 * blocks}  # each block runs again in backward
    assert grads["plain"].keys() == grads["checkpointed"].keys()
    for key, grad in grads["plain"].items():
        torch.testing.assert_close(grads["checkpointed"][key], grad, rtol=1e-5, atol=1e-7)


def test_the_sd3_source_sets_the_processor_and_checkpointing(sd3_plugin, tiny: Path) -> None:
    from fieldkit import loads_graph
    from fieldkit.graph import BuildContext

    yaml = f"""
fields:
  ours: {{type: sd3, path: '{tiny / "sd3"}', gradient_checkpointing: true}}
  stock: {{type: sd3, path: '{tiny / "sd3"}', attention: diffusers}}
"""
    ctx = BuildContext(loads_graph(yaml))
    ours, stock = ctx.field("ours").transformer, ctx.field("stock").transformer
    assert all(isinstance(p, FieldkitJointAttnProcessor) for p in ours.attn_processors.values())
    assert not any(isinstance(p, FieldkitJointAttnProcessor) for p in stock.attn_processors.values())
    assert ours.gradient_checkpointing and not stock.gradient_checkpointing
