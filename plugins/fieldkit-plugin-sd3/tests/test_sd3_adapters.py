"""``sd3.lora``: LoRA capability fields that share one base transformer, switched per call."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fieldkit_sd3.field import SD3Field
from torch import nn

from fieldkit import Cond, loads_graph
from fieldkit.backbones.field import parameter_bytes
from fieldkit.distill.student import make_student
from fieldkit.errors import GraphError
from fieldkit.graph import BuildContext
from fieldkit.graph.schema import StudentSpec
from fieldkit.models.lora import tuner_layers


def merged_copy(tiny: Path, lora: str, scale: float = 1.0) -> SD3Field:
    """An independent reference: a fresh pipeline with the LoRA fused into its weights by diffusers."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny / "sd3"), vae=None, local_files_only=True)
    pipe.load_lora_weights(str(tiny / lora), adapter_name="x")
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()
    return SD3Field(pipe.transformer)


def adapter_graph(tiny: Path) -> BuildContext:
    yaml = f"""
fields:
  base: {{type: sd3, path: '{tiny / "sd3"}'}}
  a: {{type: sd3.lora, base: base, path: '{tiny / "lora-a"}'}}
  b: {{type: sd3.lora, base: base, path: '{tiny / "lora-b"}', scale: 0.5}}
"""
    return BuildContext(loads_graph(yaml))


def test_two_adapter_fields_on_one_base_equal_two_merged_copies(
    sd3_plugin, tiny: Path, prompt_cond: Cond
) -> None:
    ctx = adapter_graph(tiny)
    base, a, b = ctx.field("base"), ctx.field("a"), ctx.field("b")
    assert a.transformer is base.transformer is b.transformer  # one base in memory
    ref_a, ref_b = merged_copy(tiny, "lora-a"), merged_copy(tiny, "lora-b", scale=0.5)
    ref_base = SD3Field(SD3Field.load_transformer(tiny / "sd3"))
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8, 0.3])
    with torch.inference_mode():
        # Interleaved, so every call has to switch the shared transformer to its own adapter.
        got = {name: [] for name in "0ab"}
        for _ in range(2):
            for name, field in (("a", a), ("0", base), ("b", b), ("a", a)):
                got[name].append(field(x, sigma, prompt_cond))
        want = {"0": ref_base(x, sigma, prompt_cond), "a": ref_a(x, sigma, prompt_cond)}
        want["b"] = ref_b(x, sigma, prompt_cond)
    for name, outputs in got.items():
        for out in outputs:
            torch.testing.assert_close(out, want[name], rtol=0, atol=1e-5)
    assert (want["a"] - want["0"]).abs().max() > 1e-2  # the adapters change the field
    assert (want["a"] - want["b"]).abs().max() > 1e-2


def test_shared_base_holds_far_fewer_bytes_than_copies(sd3_plugin, tiny: Path) -> None:
    ctx = adapter_graph(tiny)
    fields = [ctx.field(name) for name in ("base", "a", "b")]
    shared = parameter_bytes(nn.ModuleList(fields))
    copies = parameter_bytes(nn.ModuleList(copy.deepcopy(f) for f in fields))
    one = parameter_bytes(SD3Field(SD3Field.load_transformer(tiny / "sd3")))
    adapters = sum(p.numel() * p.element_size() for n, p in fields[0].named_parameters() if "lora_" in n)
    assert shared == one + adapters  # one base plus the adapters
    assert copies == 3 * one  # three full models
    assert shared < 0.45 * copies


def test_a_copy_is_standalone_its_adapter_merged_the_others_dropped(
    sd3_plugin, tiny: Path, prompt_cond: Cond
) -> None:
    ctx = adapter_graph(tiny)
    base, a = ctx.field("base"), ctx.field("a")
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.5, 0.5])
    for field in (a, base):
        clone = copy.deepcopy(field)
        assert clone.transformer is not field.transformer
        assert not tuner_layers(clone.transformer)  # plain nn.Linear layers again
        with torch.inference_mode():
            torch.testing.assert_close(
                clone(x, sigma, prompt_cond), field(x, sigma, prompt_cond), rtol=0, atol=1e-5
            )
    assert tuner_layers(base.transformer)  # the shared original keeps its adapters


def test_a_lora_student_of_the_base_trains_its_own_adapter_only(
    sd3_plugin, tiny: Path, prompt_cond: Cond
) -> None:
    ctx = adapter_graph(tiny)
    base, a = ctx.field("base"), ctx.field("a")
    student = make_student(base, StudentSpec(init="base", train="lora"))
    names = [n for n, p in student.named_parameters() if p.requires_grad]
    assert names and all(".lora_A.default." in n or ".lora_B.default." in n for n in names)
    assert not any(".a." in n or ".b." in n for n, _ in student.named_parameters())
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.6, 0.4])
    student(x, sigma, prompt_cond).square().mean().backward()
    # every adapter trains but the last block's text-query projection's, whose rows that block discards
    unused = {n for n, p in student.named_parameters() if p.requires_grad and p.grad is None}
    last = len(student.transformer.transformer_blocks) - 1
    prefix = f"transformer.transformer_blocks.{last}.attn.add_q_proj"
    assert unused == {f"{prefix}.lora_A.default.weight", f"{prefix}.lora_B.default.weight"}
    assert all(p.grad is None for p in a.parameters())  # the teachers hold no grads


def test_a_lora_file_loads_under_a_name_made_from_it(sd3_plugin, tiny: Path) -> None:
    yaml = f"""
fields:
  base: {{type: sd3, path: '{tiny / "sd3"}'}}
  a: {{type: sd3.lora, base: base, path: '{tiny / "lora-a" / "pytorch_lora_weights.safetensors"}'}}
"""
    ctx = BuildContext(loads_graph(yaml))
    assert ctx.field("a").adapter == "pytorch_lora_weights"


def test_a_full_student_of_the_base_trains_every_base_weight(
    sd3_plugin, tiny: Path, prompt_cond: Cond
) -> None:
    ctx = adapter_graph(tiny)
    base = ctx.field("base")
    ctx.field("a")  # an adapter hosted by the base before the student is made
    student = make_student(base, StudentSpec(init="base", train="full"))
    params = dict(student.named_parameters())
    assert params and all(p.requires_grad for p in params.values())
    assert not any("lora_" in n for n in params)
    assert params.keys() == dict(SD3Field(SD3Field.load_transformer(tiny / "sd3")).named_parameters()).keys()
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    student(x, torch.tensor([0.6, 0.4]), prompt_cond).square().mean().backward()
    for name in (
        "transformer_blocks.0.attn.to_q.weight",
        "transformer_blocks.1.ff.net.2.weight",
        "proj_out.weight",
    ):
        assert params[f"transformer.{name}"].grad is not None


def test_lora_over_an_adapter_or_a_non_sd3_field_is_refused(sd3_plugin, tiny: Path) -> None:
    yaml = f"""
fields:
  base: {{type: sd3, path: '{tiny / "sd3"}'}}
  a: {{type: sd3.lora, base: base, path: '{tiny / "lora-a"}'}}
  again: {{type: sd3.lora, base: a, path: '{tiny / "lora-b"}'}}
  mix: {{type: scale, field: base, c: 2.0}}
  bad: {{type: sd3.lora, base: mix, path: '{tiny / "lora-b"}'}}
"""
    ctx = BuildContext(loads_graph(yaml))
    with pytest.raises(GraphError, match="must be loaded over a base field"):
        ctx.field("again")
    with pytest.raises(GraphError, match="must be a field of the SD3 backbone"):
        ctx.field("bad")
