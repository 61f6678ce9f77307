"""fieldkit-plugin-sd3: Stable Diffusion 3 / 3.5 teachers and students from diffusers.

Registers:

- source ``sd3``: an ``SD3Transformer2DModel`` (local folder or config) as a velocity field
  (:mod:`fieldkit_sd3.field`), with fieldkit's attention processor (:mod:`fieldkit_sd3.attention`);
- source ``sd3.lora``: a LoRA capability over an ``sd3`` base, sharing its weights in memory;
- dataset ``sd3.prompts``: prompts or edit pairs with cached text embeddings (:mod:`fieldkit_sd3.prompts`);
- command ``fieldkit sd3-make-tiny`` (tiny random SD3.5 models for the CPU example, :mod:`fieldkit_sd3.tiny`).

diffusers, transformers and peft are imported inside factories and commands, never when fieldkit loads
the plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fieldkit.plugin_api import hookimpl
from fieldkit_sd3.params import PromptParams, SD3LoraParams, SD3Params

if TYPE_CHECKING:
    from fieldkit.plugin_api import BuildContext, RegisterDataset, RegisterSource

__version__ = "0.1.0"


def build_sd3(params: SD3Params, ctx: BuildContext) -> Any:
    """An SD3 / SD3.5 transformer as a field: v = transformer(x, 1000 sigma, text, pooled)."""
    from fieldkit.backbones.build import load_or_build
    from fieldkit_sd3.attention import use_fieldkit_attention
    from fieldkit_sd3.field import SD3Field

    field = load_or_build(SD3Field, params, ctx)
    if params.attention == "fieldkit":
        use_fieldkit_attention(field.transformer)
    return field


def build_sd3_lora(params: SD3LoraParams, ctx: BuildContext) -> Any:
    """A LoRA adapter over an sd3 base field; N adapters share one base transformer in memory."""
    from fieldkit.backbones.build import adapter_field
    from fieldkit_sd3.field import SD3Field

    return adapter_field(SD3Field, params, ctx, "sd3.lora")


def build_prompts(params: PromptParams, ctx: BuildContext) -> Any:
    """Prompts (or edit pairs) with SD3 text embeddings computed once and cached to safetensors."""
    from fieldkit.backbones.loading import DTYPES
    from fieldkit_sd3.prompts import prompt_bucket

    return prompt_bucket(
        ctx.path(params.file),
        ctx.path(params.pipeline),
        tuple(params.shape),
        template=params.template,
        cache=ctx.path(params.cache) if params.cache else None,
        max_sequence_length=params.max_sequence_length,
        dtype=DTYPES[params.dtype],
        device=ctx.device,
    )


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register("sd3", build_sd3, SD3Params)
    register("sd3.lora", build_sd3_lora, SD3LoraParams)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register("sd3.prompts", build_prompts, PromptParams)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    from fieldkit.plugin_api import seed_option

    @cli.command(name="sd3-make-tiny")
    @click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
    @seed_option()
    def sd3_make_tiny(folder: Path, seed: int) -> None:
        """Write tiny random SD3.5 models to FOLDER: FOLDER/sd3 (a pipeline) and FOLDER/edit-lora (a LoRA).

        What examples/sd3/tiny.yaml runs on, on a CPU, in seconds (the samples are noise: nothing is trained).
        """
        from fieldkit.plugin_api import check_new_folder
        from fieldkit_sd3.tiny import make_tiny_lora, make_tiny_pipeline

        check_new_folder(folder, "folder of tiny models")
        pipeline = make_tiny_pipeline(folder / "sd3", seed=seed)
        make_tiny_lora(pipeline, folder / "edit-lora", seed=seed + 1)
        click.echo(f"wrote {pipeline} and {folder / 'edit-lora'}")
