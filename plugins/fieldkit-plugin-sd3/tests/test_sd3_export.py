"""Export: the student as a diffusers transformer folder, or as a LoRA that StableDiffusion3Pipeline loads."""

from __future__ import annotations

from pathlib import Path

import torch
from fieldkit_sd3.field import SD3Field

from fieldkit import Cond, euler_sample
from fieldkit.backbones.schedule import scheduler_sigmas
from fieldkit.distill.session import export_model
from fieldkit.distill.student import make_student
from fieldkit.graph.schema import LoraSpec, StudentSpec
from fieldkit.models.lora import lora_tensors, save_lora

STEPS = 4


def pipeline_latents(pipe, cond: Cond, noise: torch.Tensor) -> torch.Tensor:
    return pipe(
        prompt_embeds=cond["text"],
        pooled_prompt_embeds=cond["pooled"],
        guidance_scale=1.0,
        num_inference_steps=STEPS,
        latents=noise.clone(),
        output_type="latent",
    ).images


def trained_lora_student(tiny: Path, alpha: float) -> SD3Field:
    """A LoRA student whose adapter is not zero (as after training)."""
    student = make_student(
        SD3Field(SD3Field.load_transformer(tiny / "sd3")),
        StudentSpec(init="base", train="lora", lora=LoraSpec(rank=4, alpha=alpha)),
    )
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in student.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.05)
    return student


def test_a_lora_student_loads_into_the_pipeline_as_is(tiny: Path, prompt_cond: Cond, tmp_path: Path) -> None:
    from diffusers import StableDiffusion3Pipeline

    student = trained_lora_student(tiny, alpha=8.0)  # alpha != rank: the scale travels in the metadata
    save_lora(tmp_path / "lora", lora_tensors(dict(student.named_parameters())), alpha=8.0)
    pipe = StableDiffusion3Pipeline.from_pretrained(str(tiny / "sd3"), vae=None, local_files_only=True)
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    plain = pipeline_latents(pipe, prompt_cond, noise)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    with_lora = pipeline_latents(pipe, prompt_cond, noise)
    merged = export_model(student)  # what the engine exports: LoRA merged into the weights
    with torch.inference_mode():
        ours = euler_sample(merged, noise.clone(), prompt_cond, scheduler_sigmas(tiny / "sd3", STEPS)).final
    assert (with_lora - ours).abs().max() < 1e-5
    assert (with_lora - plain).abs().max() > 1e-2  # the LoRA was applied


def test_the_exported_student_is_a_diffusers_transformer_folder(
    tiny: Path, prompt_cond: Cond, tmp_path: Path
) -> None:
    from diffusers import SD3Transformer2DModel

    student = trained_lora_student(tiny, alpha=4.0)
    merged = export_model(student)
    merged.save_pretrained(tmp_path / "student")
    assert (tmp_path / "student" / "config.json").is_file()
    loaded = SD3Transformer2DModel.from_pretrained(str(tmp_path / "student"), local_files_only=True)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    sigma = torch.tensor([0.6, 0.1])
    with torch.inference_mode():
        torch.testing.assert_close(
            SD3Field(loaded)(x, sigma, prompt_cond), student(x, sigma, prompt_cond), rtol=0, atol=1e-5
        )
