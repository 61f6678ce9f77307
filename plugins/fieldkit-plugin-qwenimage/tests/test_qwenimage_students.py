"""Teachers and students over one Qwen-Image base: LoRA teachers from files in the layouts users download
(diffusers / peft, kohya, ComfyUI-style ``diffusion_model.``) equal the pipeline's own load_lora_weights +
set_adapters and share one base; a LoRA student's exports (the adapter, the merged transformer) reload in
QwenImagePipeline and QwenImageEditPipeline and sample as fieldkit samples the student."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fieldkit_qwenimage.encode import edit_image, image_latent, load_pipeline, prompt_features
from fieldkit_qwenimage.field import QwenImageField, text_cond
from fieldkit_qwenimage.guidance import QwenImageGuidance
from fieldkit_qwenimage.tiny import make_tiny_lora
from safetensors.torch import load_file, save_file

from fieldkit import euler_sample, loads_graph
from fieldkit.backbones.loading import scheduler_config
from fieldkit.backbones.packing import pack, unpack
from fieldkit.distill.session import export_model
from fieldkit.graph import BuildContext
from fieldkit.models.lora import lora_tensors, save_lora
from fieldkit.testing import assert_shares_weights, random_lora_student

STEPS = 3
H, W = 8, 12


def kohya(state: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """diffusers-layout LoRA tensors renamed as kohya writes them (``lora_unet_<dotted name with _>``,
    ``lora_down`` / ``lora_up``, an ``alpha`` per module; the tensors scaled so alpha / rank cancels)."""
    out = {}
    for key, value in state.items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        rank = value.shape[0] if kind.startswith("A") else value.shape[1]
        if kind.startswith("A"):
            out[f"{name}.lora_down.weight"] = value
            out[f"{name}.alpha"] = torch.tensor(alpha)
        else:
            out[f"{name}.lora_up.weight"] = value * rank / alpha
    return out


@pytest.fixture(scope="module")
def loras(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """LoRAs in each layout: diffusers / peft (a folder with its config as metadata), kohya (``lora_unet_``
    names, alpha), ComfyUI / musubi style (``diffusion_model.<module>.lora_A / lora_B``)."""
    root = tmp_path_factory.mktemp("qwenimage-loras")
    peft = make_tiny_lora(tiny / "edit", root / "peft", seed=1, std=0.1)
    state = load_file(peft / "pytorch_lora_weights.safetensors")
    g = torch.Generator().manual_seed(2)
    other = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in state.items()}
    save_file(kohya(other, alpha=2.0), str(root / "kohya.safetensors"))
    comfy = {"diffusion_model." + k.removeprefix("transformer."): v.flip(0) for k, v in other.items()}
    save_file(comfy, str(root / "comfy.safetensors"))
    return {"peft": peft, "kohya": root / "kohya.safetensors", "comfy": root / "comfy.safetensors"}


def graph(tiny: Path, loras: dict[str, Path]) -> BuildContext:
    yaml = f"""
fields:
  base: {{type: qwenimage, path: '{tiny / "edit"}'}}
  peft: {{type: qwenimage.lora, base: base, path: '{loras["peft"]}', task: edit}}
  kohya: {{type: qwenimage.lora, base: base, path: '{loras["kohya"]}', scale: 0.5}}
  comfy: {{type: qwenimage.lora, base: base, path: '{loras["comfy"]}', task: edit}}
  edit: {{type: qwenimage.edit, base: base}}
  guided: {{type: qwenimage.guidance, field: comfy, scale: 4.0}}
"""
    return BuildContext(loads_graph(yaml))


def random_cond(seed: int):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randn(7, 32, generator=g), torch.randn(11, 32, generator=g)]
    negatives = [torch.randn(5, 32, generator=g) for _ in prompts]
    return text_cond(prompts, negatives, source=torch.randn(2, 16, 6, 8, generator=g))


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`")
def test_lora_teachers_in_every_layout_equal_load_lora_weights_and_share_one_base(
    qwenimage_plugin, tiny, loras
) -> None:
    ctx = graph(tiny, loras)
    names = ["peft", "kohya", "comfy"]
    fields = {n: ctx.field(n) for n in [*names, "base", "edit"]}
    assert len({id(f.transformer) for f in fields.values()}) == 1
    cond = random_cond(0)
    x = torch.randn(2, 16, H, W, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([0.8, 0.3])
    with torch.inference_mode():
        got = {n: fields[n](x, sigma, cond) for n in [*names, "edit", "peft"]}
        guided = ctx.field("guided")(x, sigma, cond)
    pipe = load_pipeline(tiny / "edit", edit=True)
    for name in names:
        pipe.load_lora_weights(str(loras[name]), adapter_name=name)
    reference = QwenImageField(pipe.transformer)
    with torch.inference_mode():
        for name in names:
            pipe.set_adapters([name], [0.5 if name == "kohya" else 1.0])
            want = reference(x, sigma, cond)
            torch.testing.assert_close(got[name], want, rtol=0, atol=1e-5)
            assert (want - got["edit"]).abs().max() > 1e-2  # the LoRA matters
        torch.testing.assert_close(
            guided, QwenImageGuidance(reference, 4.0)(x, sigma, cond), rtol=0, atol=1e-5
        )
        pipe.disable_lora()
        torch.testing.assert_close(got["edit"], reference(x, sigma, cond), rtol=0, atol=1e-5)
    assert_shares_weights([fields[n] for n in ["base", *names]])


def test_an_edit_teacher_refuses_a_t2i_batch(qwenimage_plugin, tiny, loras) -> None:
    ctx = graph(tiny, loras)
    t2i = random_cond(1).without("source")
    with pytest.raises(Exception, match=r"needs cond\['source'\]"):
        ctx.field("comfy")(torch.randn(2, 16, H, W), torch.tensor([0.5, 0.5]), t2i)


def pipeline_latents(pipe, x, **call) -> torch.Tensor:
    out = pipe(
        latents=pack(x),
        height=H * 8,
        width=W * 8,
        num_inference_steps=STEPS,
        true_cfg_scale=1.0,
        output_type="latent",
        **call,
    ).images
    return unpack(out, H, W)


@pytest.mark.slow  # about 15 s: the edit pipeline VAE-encodes its source at a megapixel per call
def test_exports_reload_in_both_pipelines_and_sample_as_fieldkit_does(
    tiny, make_image, tmp_path: Path
) -> None:
    from diffusers import QwenImageTransformer2DModel

    folder = tiny / "edit"
    base = QwenImageField(QwenImageField.load_transformer(folder), scheduler=scheduler_config(folder))
    student = random_lora_student(base)
    save_lora(tmp_path / "lora", lora_tensors(dict(student.named_parameters())), alpha=8)
    export_model(student).save_pretrained(tmp_path / "merged")

    edit, text_only = load_pipeline(folder, edit=True), load_pipeline(folder, edit=False)
    prompts = ["a red cat", "two dogs on a hill"]
    t2i_cond = text_cond(prompt_features(text_only, prompts), prompt_features(text_only, [" "])[0])
    image = make_image(1)
    resized = edit_image(edit, image)
    e_cond = text_cond(
        prompt_features(edit, ["make it blue"], images=[resized]),
        prompt_features(edit, [" "], images=[resized]),
        source=image_latent(edit, resized)[None],
    )
    x = torch.randn(2, 16, H, W, generator=torch.Generator().manual_seed(6))
    sigmas = student.sampling_sigmas(STEPS, (16, H, W))
    with torch.inference_mode():
        t2i_want = euler_sample(student, x, t2i_cond, sigmas).final
        edit_want = euler_sample(student, x[:1], e_cond, sigmas).final
        assert (t2i_want - euler_sample(base, x, t2i_cond, sigmas).final).abs().max() > 1e-2
    for kind in ("adapter", "merged"):
        parts = {}
        if kind == "merged":
            parts["transformer"] = QwenImageTransformer2DModel.from_pretrained(str(tmp_path / "merged"))
        t2i = load_pipeline(
            folder, edit=False, **parts
        )  # Qwen-Image-Edit's transformer samples from text alone too
        pipe = load_pipeline(folder, edit=True, **parts)
        if kind == "adapter":
            t2i.load_lora_weights(str(tmp_path / "lora"))
            pipe.load_lora_weights(str(tmp_path / "lora"))
        assert (pipeline_latents(t2i, x, prompt=prompts) - t2i_want).abs().max() <= 1e-5, kind
        got = pipeline_latents(pipe, x[:1], prompt="make it blue", image=image)
        assert (got - edit_want).abs().max() <= 1e-5, kind
