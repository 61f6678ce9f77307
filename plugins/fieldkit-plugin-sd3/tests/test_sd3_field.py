"""The ``sd3`` source: loading (folders, subfolders, dtypes, SD3 and SD3.5 configs) and the conventions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fieldkit_sd3.field import SD3Field

from fieldkit import Cond, loads_graph
from fieldkit.errors import GraphError
from fieldkit.graph import BuildContext


def graph_field(yaml: str, name: str = "base"):
    return BuildContext(loads_graph(yaml)).field(name)


def test_loads_sd35_and_sd3_pipelines_with_their_attention_layouts(sd3_plugin, tiny: Path) -> None:
    sd35 = graph_field(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3'}'}}\n")
    sd3 = graph_field(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3-v1'}'}}\n")
    assert isinstance(sd35, SD3Field) and isinstance(sd3, SD3Field)
    # SD3.5: a dual (second, image-only) attention in block 0 and RMS q/k norms; SD3: neither.
    assert sd35.transformer.transformer_blocks[0].attn2 is not None
    assert sd35.transformer.transformer_blocks[0].attn.norm_q is not None
    assert sd3.transformer.transformer_blocks[0].attn2 is None
    assert sd3.transformer.transformer_blocks[0].attn.norm_q is None
    assert not any(p.requires_grad for p in sd35.parameters())  # a built source is a frozen teacher


def test_dtype_is_applied_and_checked_and_a_transformer_folder_loads_without_subfolder(
    sd3_plugin, tiny: Path, tmp_path: Path
) -> None:
    half = graph_field(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3'}', dtype: bfloat16}}\n")
    assert half.transformer.dtype == torch.bfloat16
    SD3Field.load_transformer(tiny / "sd3").save_pretrained(str(tmp_path / "t"))
    alone = graph_field(f"fields:\n  base: {{type: sd3, path: '{tmp_path / 't'}'}}\n")
    assert alone.transformer.dtype == torch.float32
    with pytest.raises(GraphError, match="no SD3Transformer2DModel at"):
        graph_field(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3'}', subfolder: ''}}\n")


def test_a_graph_gives_exactly_one_of_path_and_config(sd3_plugin) -> None:
    with pytest.raises(GraphError, match="exactly one of `path`"):
        loads_graph("fields:\n  base: {type: sd3}\n")
    with pytest.raises(GraphError, match="exactly one of `path`"):
        loads_graph("fields:\n  base: {type: sd3, path: x, config: {num_layers: 1}}\n")


def test_built_from_a_config_is_seeded_and_checks_the_caption_width(sd3_plugin) -> None:
    from fieldkit_sd3.tiny import transformer_config

    config = transformer_config()
    yaml = "fields:\n  base: {type: sd3, seed: 3, config: %s}\n"
    first, second = graph_field(yaml % json.dumps(config)), graph_field(yaml % json.dumps(config))
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(GraphError, match="caption_projection_dim must equal"):
        graph_field(yaml % json.dumps({**config, "caption_projection_dim": 16}))


def test_velocity_is_the_transformer_output_at_timestep_1000_sigma(tiny: Path, prompt_cond: Cond) -> None:
    """fieldkit's sigma in [0, 1] is SD3's timestep / 1000, and SD3's output (noise - data) is v as it is."""
    transformer = SD3Field.load_transformer(tiny / "sd3")
    field = SD3Field(transformer)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.9, 0.25])
    with torch.inference_mode():
        v = field(x, sigma, prompt_cond)
        out = transformer(
            hidden_states=x,
            timestep=torch.tensor([900.0, 250.0]),
            encoder_hidden_states=prompt_cond["text"],
            pooled_projections=prompt_cond["pooled"],
        ).sample
    torch.testing.assert_close(v, out, rtol=0, atol=1e-6)
    assert not torch.allclose(v, field(x, sigma.flip(0), prompt_cond))


def test_a_missing_prompt_embedding_is_named(tiny: Path, prompt_cond: Cond) -> None:
    field = SD3Field(SD3Field.load_transformer(tiny / "sd3"))
    with pytest.raises(Exception, match=r"cond\['pooled'\]"):
        field(torch.zeros(2, 4, 8, 8), torch.ones(2), prompt_cond.without("pooled"))


def _weights_equal(a: SD3Field, b: SD3Field) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_a_folder_of_fp16_variant_weights_loads_with_variant(sd3_plugin, tiny: Path, tmp_path: Path) -> None:
    """diffusers writes and loads ``diffusion_pytorch_model.fp16.safetensors`` with ``variant="fp16"``."""
    SD3Field.load_transformer(tiny / "sd3").save_pretrained(str(tmp_path / "t"), variant="fp16")
    with pytest.raises(GraphError, match="only the weights variant") as err:
        graph_field(f"fields:\n  base: {{type: sd3, path: '{tmp_path / 't'}'}}\n")
    assert "variant: fp16" in str(err.value)
    loaded = graph_field(f"fields:\n  base: {{type: sd3, path: '{tmp_path / 't'}', variant: fp16}}\n")
    assert _weights_equal(loaded, graph_field(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3'}'}}\n"))


def test_a_single_file_checkpoint_loads_with_its_pipelines_config_and_scheduler(
    sd3_plugin, tiny: Path, tmp_path: Path
) -> None:
    """A single .safetensors file (the form community checkpoints ship in) with ``base_config``, the folder
    whose config (and scheduler) it is read with; written here from the tiny pipeline's transformer."""
    from safetensors.torch import save_file

    reference = graph_field(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3'}'}}\n")
    file = tmp_path / "sd35-tiny.safetensors"
    save_file({k: v.contiguous() for k, v in reference.transformer.state_dict().items()}, str(file))
    with pytest.raises(GraphError, match="single-file checkpoint") as err:
        graph_field(f"fields:\n  base: {{type: sd3, path: '{file}'}}\n")
    assert "base_config" in str(err.value)
    single = graph_field(f"fields:\n  base: {{type: sd3, path: '{file}', base_config: '{tiny / 'sd3'}'}}\n")
    assert _weights_equal(single, reference)
    assert torch.equal(single.sampling_sigmas(4, (4, 8, 8)), reference.sampling_sigmas(4, (4, 8, 8)))


def test_a_pipelines_transformer_folder_samples_on_the_pipelines_scheduler(sd3_plugin, tiny: Path) -> None:
    inner = graph_field(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3' / 'transformer'}'}}\n")
    whole = graph_field(f"fields:\n  base: {{type: sd3, path: '{tiny / 'sd3'}'}}\n")
    sigmas = inner.sampling_sigmas(4, (4, 8, 8))
    assert sigmas is not None and torch.equal(sigmas, whole.sampling_sigmas(4, (4, 8, 8)))
