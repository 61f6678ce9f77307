"""Students and teachers over one Z-Image base: LoRA capability fields sharing it, the paper's LoRA student,
and its exports (an adapter, a merged transformer folder) loaded by both pipelines and compared with
fieldkit's sampler."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from fieldkit_zimage.encode import image_latent, image_siglip, prompt_features
from fieldkit_zimage.field import LORA_TARGETS, ZImageField, text_cond
from fieldkit_zimage.tiny import make_tiny_lora

from fieldkit import Cond, euler_sample, loads_graph
from fieldkit.backbones.field import parameter_bytes
from fieldkit.backbones.loading import scheduler_config
from fieldkit.distill.session import export_model
from fieldkit.distill.student import make_student
from fieldkit.errors import GraphError
from fieldkit.graph import BuildContext
from fieldkit.graph.schema import StudentSpec
from fieldkit.models.lora import lora_tensors, save_lora
from fieldkit.testing import random_lora_student

STEPS = 3


@pytest.fixture(scope="module")
def loras(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("zimage-loras")
    make_tiny_lora(tiny / "omni", root / "local", seed=1, std=0.1)
    make_tiny_lora(tiny / "omni", root / "global", seed=2, std=0.1)
    return root


def graph(tiny: Path, loras: Path) -> BuildContext:
    yaml = f"""
fields:
  base: {{type: zimage, path: '{tiny / "omni"}'}}
  local: {{type: zimage.lora, base: base, path: '{loras / "local"}', task: edit}}
  global: {{type: zimage.lora, base: base, path: '{loras / "global"}', scale: 0.5, task: edit}}
  edit: {{type: zimage.edit, base: base}}
"""
    return BuildContext(loads_graph(yaml))


def edit_cond(omni_pipe, make_image) -> Cond:
    segs = prompt_features(omni_pipe, ["make it blue", "add a hat"], max_sequence_length=64, edit=True)
    negative = prompt_features(omni_pipe, [""], max_sequence_length=64, edit=True)[0]
    images = [make_image(1), make_image(2)]
    source = torch.stack([image_latent(omni_pipe, im) for im in images])
    siglip = torch.stack([image_siglip(omni_pipe, im) for im in images])
    return text_cond(segs, negative, source=source, siglip=siglip)


def merged(tiny: Path, loras: Path, name: str, scale: float) -> ZImageField:
    """An independent reference: a fresh pipeline with the LoRA fused into its weights by diffusers."""
    from diffusers import ZImagePipeline

    pipe = ZImagePipeline.from_pretrained(str(tiny / "omni"), vae=None, local_files_only=True)
    pipe.load_lora_weights(str(loras / name), adapter_name="x")
    pipe.fuse_lora(lora_scale=scale)
    pipe.unload_lora_weights()
    return ZImageField(pipe.transformer)


def test_lora_teachers_share_one_base_and_equal_merged_copies(
    zimage_plugin, tiny, loras, omni_pipe, make_image
) -> None:
    ctx = graph(tiny, loras)
    base, local, glob, edit = (ctx.field(n) for n in ("base", "local", "global", "edit"))
    assert base.transformer is local.transformer is glob.transformer is edit.transformer
    cond = edit_cond(omni_pipe, make_image)
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.8, 0.3])
    references = [
        merged(tiny, loras, "local", 1.0),
        ZImageField(ZImageField.load_transformer(tiny / "omni")),
        merged(tiny, loras, "global", 0.5),
    ]
    with torch.inference_mode():
        # Interleaved, so every call has to switch the shared transformer to its own adapter.
        got = [f(x, sigma, cond) for f in (local, edit, glob, local)]
        want = [f(x, sigma, cond) for f in references]
        want.append(want[0])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)
    assert (want[0] - want[1]).abs().max() > 1e-2 and (want[0] - want[2]).abs().max() > 1e-2
    shared = parameter_bytes(torch.nn.ModuleList([base, local, glob]))
    copies = parameter_bytes(torch.nn.ModuleList(copy.deepcopy(f) for f in (base, local, glob)))
    assert shared < 0.45 * copies


def test_an_edit_field_refuses_a_t2i_batch_and_a_base_without_siglip(zimage_plugin, tiny, loras) -> None:
    ctx = graph(tiny, loras)
    t2i_cond = text_cond([[torch.randn(5, 32)]], [torch.randn(3, 32)])
    with pytest.raises(Exception, match=r"needs cond\['source'\]"):
        ctx.field("local")(torch.randn(1, 16, 8, 8), torch.tensor([0.5]), t2i_cond)
    bad = BuildContext(loads_graph(f"fields:\n  e: {{type: zimage.edit, path: '{tiny / 't2i'}'}}\n"))
    with pytest.raises(GraphError, match="SigLIP input"):
        bad.field("e")
    t2i_only = ZImageField(ZImageField.load_transformer(tiny / "t2i"))
    edit = text_cond([[torch.randn(5, 32)] * 3], [torch.randn(3, 32)] * 3)
    edit = edit.replace(source=torch.randn(1, 16, 8, 8), siglip=torch.randn(1, 4, 4, 32))
    with pytest.raises(Exception, match="without SigLIP input"):
        t2i_only(torch.randn(1, 16, 8, 8), torch.tensor([0.5]), edit)


def test_the_lora_student_adapts_the_papers_targets_at_rank_128(zimage_plugin, tiny, loras) -> None:
    ctx = graph(tiny, loras)
    ctx.field("local")  # a teacher adapter hosted by the base before the student is made
    student = make_student(ctx.field("base"), StudentSpec(init="base", train="lora"))
    trained = {n: p for n, p in student.named_parameters() if p.requires_grad}
    assert trained and all(".default." in n for n in trained)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained}
    assert adapted == {"to_q", "to_k", "to_v", "0", "w1", "w2", "w3"}  # to_out.0 ends in "0"
    assert all(p.shape[0] == 128 for n, p in trained.items() if ".lora_A." in n)
    assert set(LORA_TARGETS) == {"to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3"}


def sample(field, cond, x, sigmas) -> torch.Tensor:
    with torch.inference_mode():
        return euler_sample(field, x, cond, sigmas).final


def test_exports_load_in_both_pipelines_and_sample_as_fieldkit_does(
    zimage_plugin, tiny, t2i_pipe, omni_pipe, make_image, pipeline_latents, tmp_path: Path
) -> None:
    from diffusers import ZImageOmniPipeline, ZImagePipeline, ZImageTransformer2DModel

    base = ZImageField(ZImageField.load_transformer(tiny / "omni"), scheduler=scheduler_config(tiny / "omni"))
    student = random_lora_student(base)
    adapter = tmp_path / "lora"
    save_lora(adapter, lora_tensors(dict(student.named_parameters())), alpha=8)
    export_model(student).save_pretrained(tmp_path / "merged")
    merged_t = ZImageTransformer2DModel.from_pretrained(str(tmp_path / "merged"), local_files_only=True)

    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(6))
    sigmas = student.sampling_sigmas(STEPS, (16, 8, 8))
    prompts = ["a red cat", "two dogs"]
    segs = prompt_features(t2i_pipe, prompts, max_sequence_length=64, edit=False)
    t2i_cond = text_cond(segs, prompt_features(t2i_pipe, [""], max_sequence_length=64, edit=False)[0])
    t2i_want = sample(student, t2i_cond, x, sigmas)
    e_cond = edit_cond(omni_pipe, make_image)
    edit_want = sample(student, e_cond, x, sigmas)
    assert (t2i_want - sample(base, t2i_cond, x, sigmas)).abs().max() > 1e-2  # the LoRA matters

    for kind in ("adapter", "merged"):
        extra = {"transformer": merged_t} if kind == "merged" else {}
        t2i = ZImagePipeline.from_pretrained(str(tiny / "t2i"), local_files_only=True, **extra)
        omni = ZImageOmniPipeline.from_pretrained(
            str(tiny / "omni"), vae=omni_pipe.vae, local_files_only=True, **extra
        )
        if kind == "adapter":
            t2i.transformer = ZImageField.load_transformer(
                tiny / "omni"
            )  # the student's base, in the T2I pipeline
            t2i.load_lora_weights(str(adapter))
            omni.load_lora_weights(str(adapter))
        t2i_latents, edit_latents = pipeline_latents
        got = t2i_latents(t2i, segs, x, STEPS, guidance_scale=0.0)
        assert (got - t2i_want).abs().max() <= 1e-5, kind
        images = [make_image(1), make_image(2)]
        edits = edit_latents(omni, images, ["make it blue", "add a hat"], x, STEPS, guidance_scale=0.0)
        assert (edits - edit_want).abs().max() <= 1e-5, kind


def test_the_omni_exports_readme_snippet_loads_a_pipeline_that_edits(
    tiny, make_image, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """diffusers' ZImageOmniPipeline encodes edit images in bfloat16: the export's own snippet loads the VAE
    so, and the pipeline it loads edits (with the fp32 VAE of a plain from_pretrained it fails)."""
    import json
    import re

    from fieldkit.export import export_run

    run = tmp_path / "run"
    ZImageField.load_transformer(tiny / "omni").save_pretrained(str(run / "student"))
    graph = {"fields": {"init": {"type": "zimage", "path": str(tiny / "omni")}}, "student": {"init": "init"}}
    (run / "graph.json").write_text(json.dumps(graph))
    export_run(run, "diffusers", tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    snippet = re.findall(r"## Load it\n\n```python\n(.*?)```", card, re.S)[0]
    assert "bfloat16" in snippet
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(snippet, namespace)
    pipe = namespace["pipe"]
    out = pipe(  # type: ignore[operator]
        image=[make_image(1)], prompt="make it blue", num_inference_steps=1, output_type="latent"
    )
    assert out.images.shape == (1, 16, 8, 8)
