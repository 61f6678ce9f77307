"""Teachers and students over one FLUX base: LoRA teachers from files in the layouts users download (diffusers
/ peft, ai-toolkit, kohya) equal the pipeline's own load_lora_weights + set_adapters and share one base; a
LoRA student's exports (the adapter, the merged transformer) reload in FluxPipeline and FluxKontextPipeline
and sample as fieldkit samples the student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fieldkit_flux.encode import image_latent, prompt_features
from fieldkit_flux.field import FluxField, text_cond
from fieldkit_flux.tiny import make_tiny_lora
from safetensors.torch import load_file, save_file

from fieldkit import Cond, euler_sample, loads_graph
from fieldkit.backbones.loading import scheduler_config
from fieldkit.backbones.packing import pack, unpack
from fieldkit.distill.session import export_model
from fieldkit.graph import BuildContext
from fieldkit.models.lora import lora_tensors, save_lora
from fieldkit.testing import assert_shares_weights, random_lora_student

STEPS = 3
H, W = 8, 12
#: kohya (sd-scripts) names of the tiny transformer's modules: BFL's, the attention projections fused
#: (not single blocks' linear1: diffusers splits it at FLUX.1's real widths, 3 x 3072 + 12288).
DOUBLE, SINGLE = "transformer_blocks.0.", "single_transformer_blocks.0."
KOHYA = {
    "double_blocks_0_img_attn_qkv": [DOUBLE + "attn.to_q", DOUBLE + "attn.to_k", DOUBLE + "attn.to_v"],
    "double_blocks_0_img_attn_proj": [DOUBLE + "attn.to_out.0"],
    "double_blocks_0_txt_attn_qkv": [DOUBLE + f"attn.add_{p}_proj" for p in "qkv"],
    "single_blocks_0_linear2": [SINGLE + "proj_out"],
}


def kohya_lora(like: Path, out: Path, alpha: float) -> Path:
    """A kohya-layout file (``lora_unet_<bfl name>.lora_down / lora_up / alpha``) of random weights shaped
    like the modules of the diffusers-layout LoRA ``like``."""
    shapes = {k.removeprefix("transformer."): v.shape for k, v in load_file(like).items()}
    g = torch.Generator().manual_seed(11)
    state = {}
    for name, full in KOHYA.items():
        rank, fan_in = shapes[f"{full[0]}.lora_A.weight"]
        fan_out = sum(shapes[f"{m}.lora_B.weight"][0] for m in full)
        state[f"lora_unet_{name}.lora_down.weight"] = torch.randn(rank, fan_in, generator=g) * 0.1
        state[f"lora_unet_{name}.lora_up.weight"] = torch.randn(fan_out, rank, generator=g) * 0.1
        state[f"lora_unet_{name}.alpha"] = torch.tensor(alpha)
    save_file(state, str(out))
    return out


@pytest.fixture(scope="module")
def loras(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same kind of LoRA in each layout: diffusers / peft (a folder with its config as metadata),
    ai-toolkit (transformer.* lora_A / lora_B keys, no metadata), kohya (BFL names, fused qkv, alpha)."""
    root = tmp_path_factory.mktemp("flux-loras")
    peft = make_tiny_lora(tiny / "kontext", root / "peft", seed=1, std=0.1)
    weights = peft / "pytorch_lora_weights.safetensors"
    g = torch.Generator().manual_seed(2)
    plain = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in load_file(weights).items()}
    save_file(plain, str(root / "ai_toolkit.safetensors"))
    return {
        "peft": peft,
        "ai_toolkit": root / "ai_toolkit.safetensors",
        "kohya": kohya_lora(weights, root / "kohya.safetensors", alpha=2.0),
    }


def graph(tiny: Path, loras: dict[str, Path]) -> BuildContext:
    yaml = f"""
fields:
  base: {{type: flux, path: '{tiny / "kontext"}', guidance: 2.5}}
  peft: {{type: flux.lora, base: base, path: '{loras["peft"]}', task: edit}}
  ai_toolkit: {{type: flux.lora, base: base, path: '{loras["ai_toolkit"]}', scale: 0.5}}
  kohya: {{type: flux.lora, base: base, path: '{loras["kohya"]}', task: edit}}
  kontext: {{type: flux.kontext, base: base}}
"""
    return BuildContext(loads_graph(yaml))


def edit_cond(pipe, make_image) -> Cond:
    text, pooled = prompt_features(pipe, ["make it blue", "add a hat"], max_sequence_length=16)
    null_text, null_pooled = prompt_features(pipe, [""], max_sequence_length=16)
    source = torch.stack([image_latent(pipe, make_image(i), auto_resize=False) for i in (1, 2)])
    return text_cond(text, pooled, null_text, null_pooled, source=source)


def load(folder: Path, kontext: bool = True, **parts):
    from diffusers import FluxKontextPipeline, FluxPipeline

    cls = FluxKontextPipeline if kontext else FluxPipeline
    return cls.from_pretrained(str(folder), local_files_only=True, **parts)


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_lora_teachers_in_every_layout_equal_load_lora_weights_and_share_one_base(
    flux_plugin, tiny, loras, make_image
) -> None:
    ctx = graph(tiny, loras)
    names = ["peft", "ai_toolkit", "kohya"]
    fields = {n: ctx.field(n) for n in [*names, "base", "kontext"]}
    assert len({id(f.transformer) for f in fields.values()}) == 1
    pipe = load(tiny / "kontext")
    cond = edit_cond(pipe, make_image)
    x = torch.randn(2, 16, H, W, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8, 0.3])
    with torch.inference_mode():
        # interleaved, so every call has to switch the shared transformer to its own adapter
        got = {n: fields[n](x, sigma, cond) for n in [*names, "kontext", "peft"]}
    for name in names:
        pipe.load_lora_weights(str(loras[name]), adapter_name=name)
    reference = FluxField(pipe.transformer, guidance=2.5)
    with torch.inference_mode():
        for name in names:
            pipe.set_adapters([name], [0.5 if name == "ai_toolkit" else 1.0])
            want = reference(x, sigma, cond)
            torch.testing.assert_close(got[name], want, rtol=0, atol=1e-5)
            assert (want - got["kontext"]).abs().max() > 1e-2  # the LoRA matters
        pipe.disable_lora()
        torch.testing.assert_close(got["kontext"], reference(x, sigma, cond), rtol=0, atol=1e-5)
    assert_shares_weights([fields[n] for n in ["base", *names]])


def test_a_kontext_teacher_refuses_a_t2i_batch(flux_plugin, tiny, loras) -> None:
    ctx = graph(tiny, loras)
    t2i = text_cond(torch.randn(1, 16, 32), torch.randn(1, 32), torch.randn(1, 16, 32), torch.randn(1, 32))
    with pytest.raises(Exception, match=r"needs cond\['source'\]"):
        ctx.field("kohya")(torch.randn(1, 16, H, W), torch.tensor([0.5]), t2i)
    with pytest.raises(Exception, match="even H and W"):
        ctx.field("base")(torch.randn(1, 16, 7, W), torch.tensor([0.5]), t2i)


def pipeline_latents(pipe, cond: Cond, x, **call) -> torch.Tensor:
    out = pipe(
        prompt_embeds=cond["text"],
        pooled_prompt_embeds=cond["pooled"],
        latents=pack(x),
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        max_sequence_length=16,
        guidance_scale=2.5,
        output_type="latent",
        **call,
    ).images
    return unpack(out, H, W)


def test_exports_reload_in_both_pipelines_and_sample_as_fieldkit_does(
    tiny, make_image, tmp_path: Path
) -> None:
    from diffusers import FluxTransformer2DModel

    base = FluxField(
        FluxField.load_transformer(tiny / "kontext"),
        guidance=2.5,
        scheduler=scheduler_config(tiny / "kontext"),
    )
    student = random_lora_student(base)
    save_lora(tmp_path / "lora", lora_tensors(dict(student.named_parameters())), alpha=8)
    export_model(student).save_pretrained(tmp_path / "merged")

    kontext = load(tiny / "kontext")
    e_cond = edit_cond(kontext, make_image)
    t2i_cond = e_cond.without("source")
    x = torch.randn(2, 16, H, W, generator=torch.Generator().manual_seed(6))
    sigmas = student.sampling_sigmas(STEPS, (16, H, W))
    with torch.inference_mode():
        t2i_want = euler_sample(student, x, t2i_cond, sigmas).final
        edit_want = euler_sample(student, x, e_cond, sigmas).final
        assert (t2i_want - euler_sample(base, x, t2i_cond, sigmas).final).abs().max() > 1e-2
    images = [make_image(1), make_image(2)]
    kontext_call = {"image": images, "_auto_resize": False, "max_area": H * W * 64}
    for kind in ("adapter", "merged"):
        parts = {}
        if kind == "merged":
            parts["transformer"] = FluxTransformer2DModel.from_pretrained(str(tmp_path / "merged"))
        t2i = load(tiny / "kontext", kontext=False, **parts)  # FLUX.1 Kontext samples T2I too
        edit = load(tiny / "kontext", **parts)
        if kind == "adapter":
            t2i.load_lora_weights(str(tmp_path / "lora"))
            edit.load_lora_weights(str(tmp_path / "lora"))
        assert (pipeline_latents(t2i, t2i_cond, x) - t2i_want).abs().max() <= 1e-5, kind
        assert (pipeline_latents(edit, e_cond, x, **kontext_call) - edit_want).abs().max() <= 1e-5, kind
