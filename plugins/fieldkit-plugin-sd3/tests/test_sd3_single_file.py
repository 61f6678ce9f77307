"""Single-file SD3 / SD3.5 checkpoints in the original (Stability) layout, the form community checkpoints ship
in: the ``sd3`` source reads them as ``SD3Transformer2DModel.from_single_file`` does (diffusers' own
conversion), and a file of another layout or model is one clear error.

The tests write such a file from a tiny pipeline's transformer with :func:`to_original`, the inverse of
diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers`` for the keys the tiny configs have (checked to
round-trip through diffusers' converter before it is used).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file
from torch import Tensor

from fieldkit import Cond, Guidance, euler_sample, loads_graph
from fieldkit.cli import cli
from fieldkit.graph import BuildContext

PREFIX = "model.diffusion_model."  # the transformer's keys in an original single-file checkpoint

#: diffusers module -> original module, outside the blocks.
TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",  # (scale, shift) stored as (shift, scale)
}
#: diffusers module in ``transformer_blocks.N`` -> original module in ``joint_blocks.N``.
BLOCK = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",  # swapped too in the last block
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
#: separate diffusers q, k, v projections (``{}`` is q, k or v) -> one fused original ``qkv``.
FUSED = {
    "attn.to_{}": "x_block.attn.qkv",
    "attn.add_{}_proj": "context_block.attn.qkv",
    "attn2.to_{}": "x_block.attn2.qkv",
}


def _swap_halves(w: Tensor) -> Tensor:
    first, second = w.chunk(2)
    return torch.cat([second, first])


def to_original(state: dict[str, Tensor], num_layers: int) -> dict[str, Tensor]:
    """``state`` (a diffusers ``SD3Transformer2DModel``'s) in the original layout, without the prefix."""
    out = {"pos_embed": state["pos_embed.pos_embed"]}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if module in TOP:
            out[f"{TOP[module]}.{param}"] = _swap_halves(value) if module == "norm_out.linear" else value
    for i in range(num_layers):
        ours, theirs = f"transformer_blocks.{i}.", f"joint_blocks.{i}."
        for key, value in state.items():
            module, param = key.removeprefix(ours).rsplit(".", 1)
            if key.startswith(ours) and module in BLOCK:
                last_context = module == "norm1_context.linear" and i == num_layers - 1
                out[f"{theirs}{BLOCK[module]}.{param}"] = _swap_halves(value) if last_context else value
        for pattern, fused in FUSED.items():
            for param in ("weight", "bias"):
                parts = [state.get(f"{ours}{pattern.format(c)}.{param}") for c in "qkv"]
                if all(p is not None for p in parts):
                    out[f"{theirs}{fused}.{param}"] = torch.cat(parts)
    return out


def _transformer(folder: Path):
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel.from_pretrained(str(folder), subfolder="transformer", local_files_only=True)


def _assert_same_state(got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def write_original(folder: Path, file: Path, *, drop: str | None = None) -> dict[str, Tensor]:
    """The transformer of the pipeline ``folder`` written to ``file`` as a community checkpoint is: prefixed
    original keys, with a VAE weight beside them (left alone by the conversion); ``drop`` one original key.
    Returns the transformer's (diffusers) state dict."""
    transformer = _transformer(folder)
    state = transformer.state_dict()
    original = to_original(state, transformer.config.num_layers)
    checkpoint = {PREFIX + k: v.contiguous() for k, v in original.items() if k != drop}
    checkpoint["first_stage_model.decoder.conv_in.weight"] = torch.zeros(8, 4, 3, 3)
    save_file(checkpoint, str(file))
    return state


@pytest.mark.parametrize("folder", ["sd3", "sd3-v1"])
def test_to_original_round_trips_through_diffusers_converter(tiny: Path, folder: str) -> None:
    """diffusers' converter takes the written layout back to the very state dict (every key, every value):
    the layout the tests write is the one diffusers reads."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    transformer = _transformer(tiny / folder)
    state = transformer.state_dict()
    original = to_original(state, transformer.config.num_layers)
    assert len(original) < len(state)  # q, k, v fused
    assert "joint_blocks.0.x_block.attn.qkv.weight" in original and "final_layer.linear.bias" in original
    _assert_same_state(convert_sd3_transformer_checkpoint_to_diffusers(dict(original)), state)


def _field(file: Path, base_config: Path):
    yaml = f"fields:\n  base: {{type: sd3, path: '{file}', base_config: '{base_config}'}}\n"
    return BuildContext(loads_graph(yaml)).field("base")


@pytest.mark.parametrize("folder", ["sd3", "sd3-v1"])
def test_an_original_layout_file_loads_as_diffusers_from_single_file_does(
    sd3_plugin, tiny: Path, tmp_path: Path, folder: str
) -> None:
    from diffusers import SD3Transformer2DModel

    file = tmp_path / f"{folder}.safetensors"
    state = write_original(tiny / folder, file)
    field = _field(file, tiny / folder)
    _assert_same_state(field.transformer.state_dict(), state)
    theirs = SD3Transformer2DModel.from_single_file(
        str(file), config=str(tiny / folder), subfolder="transformer", local_files_only=True
    )
    _assert_same_state(field.transformer.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("w", [1.0, 4.5])
def test_the_field_on_an_original_layout_file_reproduces_the_pipeline(
    sd3_plugin, tiny: Path, tmp_path: Path, pipe, w: float
) -> None:
    """fieldkit's Euler sampling of the single-file field (on ``base_config``'s scheduler) equals the tiny
    pipeline's latents (float32)."""
    file = tmp_path / "sd35.safetensors"
    write_original(tiny / "sd3", file)
    field = _field(file, tiny / "sd3")
    with torch.no_grad():
        text, null_text, pooled, null_pooled = pipe.encode_prompt(
            ["a red cat", "two dogs on a hill"],
            None,
            None,
            do_classifier_free_guidance=True,
            max_sequence_length=16,
        )
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    steps = 5
    expected = pipe(
        prompt_embeds=text,
        negative_prompt_embeds=null_text,
        pooled_prompt_embeds=pooled,
        negative_pooled_prompt_embeds=null_pooled,
        guidance_scale=w,
        num_inference_steps=steps,
        latents=noise.clone(),
        output_type="latent",
        max_sequence_length=16,
    ).images
    cond = Cond(text=text, pooled=pooled, nulls={"text": null_text[:1], "pooled": null_pooled[:1]})
    sigmas = field.sampling_sigmas(steps, (4, 8, 8))
    assert sigmas is not None  # the scheduler of base_config, not fieldkit's even grid
    with torch.inference_mode():
        got = euler_sample(Guidance(field, w), noise.clone(), cond, sigmas).final
    assert (got - expected).abs().max() < 1e-5
    assert expected.abs().max() > 1  # not two near-zero tensors


def _bad_files(tiny: Path, root: Path) -> dict[str, tuple[Path, str]]:
    """Bad single files for the SD3.5 pipeline's config, and what the error says about each."""
    files = {}
    missing = root / "missing-key.safetensors"
    write_original(tiny / "sd3", missing, drop="joint_blocks.1.x_block.mlp.fc2.bias")
    files["original, a key missing"] = (missing, "found no key 'joint_blocks.1.x_block.mlp.fc2.bias'")
    v1 = root / "sd3-v1.safetensors"
    write_original(tiny / "sd3-v1", v1)  # SD3 read with SD3.5's config: no q/k norms, no dual attention
    files["another model's"] = (v1, "weight(s) missing (transformer_blocks.0.attn.norm_added_k.weight")
    state = _transformer(tiny / "sd3").state_dict()
    diffusers = root / "diffusers-missing.safetensors"
    save_file({k: v.contiguous() for k, v in state.items() if k != "proj_out.bias"}, str(diffusers))
    files["diffusers, a key missing"] = (diffusers, "1 weight(s) missing (proj_out.bias)")
    other = root / "other.safetensors"
    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(3, 2)}, str(other))
    files["another layout"] = (other, "are in neither the diffusers nor the original layout")
    text = root / "text.safetensors"
    text.write_text("not weights")
    files["not a checkpoint"] = (text, "is not a readable checkpoint")
    return files


def test_a_bad_single_file_is_one_clear_error_with_exit_2(sd3_plugin, tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "prompts.csv").write_text("prompt\na red fox\n")
    for case, (file, message) in _bad_files(tiny, tmp_path).items():
        graph = tmp_path / "graph.yaml"
        graph.write_text(
            f"fields:\n  base: {{type: sd3, path: '{file}', base_config: '{tiny / 'sd3'}'}}\n"
            "routes:\n  t2i:\n    field: base\n"
            f"    data: {{type: sd3.prompts, file: prompts.csv, pipeline: '{tiny / 'sd3'}',\n"
            "           shape: [4, 8, 8], max_sequence_length: 16, dtype: float32}\n"
        )
        result = CliRunner().invoke(cli, ["sample", str(graph), "-n", "1", "-o", str(tmp_path / "x.png")])
        assert result.exit_code == 2, (case, result.output)
        assert message in result.output and "hint:" in result.output, (case, result.output)
        assert "Traceback" not in result.output and not (tmp_path / "x.png").exists(), case
