"""fieldkit-plugin-qwenimage: Qwen-Image (diffusers) text-to-image and Qwen-Image-Edit teachers and students.

Registers:

- source ``qwenimage``: a ``QwenImageTransformer2DModel`` (local folder or config) as a velocity field
  (:mod:`fieldkit_qwenimage.field`); T2I, or an edit when the batch carries a source latent;
- source ``qwenimage.edit``: the same as an edit field (``QwenImageEditPipeline``'s call), from its own
  folder or sharing the transformer of a ``base`` field;
- source ``qwenimage.lora``: a LoRA capability over a qwenimage base, sharing its weights in memory;
- operator ``qwenimage.guidance``: true CFG with the pipelines' per-token norm rescale
  (:mod:`fieldkit_qwenimage.guidance`);
- datasets ``qwenimage.prompts`` and ``qwenimage.edits``: prompts, and edit pairs (source image,
  instruction, optional target), with cached Qwen2.5-VL features and source latents
  (:mod:`fieldkit_qwenimage.data`);
- command ``fieldkit qwenimage-make-tiny`` (tiny random pipelines, :mod:`fieldkit_qwenimage.tiny`).

``fieldkit export RUN --format peft`` writes a LoRA student that both pipelines' ``load_lora_weights``
read. diffusers, transformers and peft are imported inside factories and commands, never when fieldkit
loads the plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fieldkit.plugin_api import hookimpl
from fieldkit_qwenimage.params import (
    EditParams,
    GuidanceParams,
    PromptParams,
    QwenImageEditParams,
    QwenImageLoraParams,
    QwenImageParams,
)

if TYPE_CHECKING:
    from fieldkit.plugin_api import BuildContext, RegisterDataset, RegisterOperator, RegisterSource

__version__ = "0.1.0"


def build_qwenimage(params: QwenImageParams, ctx: BuildContext) -> Any:
    """A Qwen-Image transformer as a field: ``v = transformer(pack(x), sigma, text, text_mask)``."""
    from fieldkit.backbones.build import load_or_build
    from fieldkit_qwenimage.field import QwenImageField

    return load_or_build(QwenImageField, params, ctx)


def build_qwenimage_edit(params: QwenImageEditParams, ctx: BuildContext) -> Any:
    """A Qwen-Image-Edit transformer as an edit field; with ``base``, over that field's transformer."""
    from fieldkit.backbones.build import load_or_build
    from fieldkit.backbones.field import as_shared_field
    from fieldkit_qwenimage.field import QwenImageField

    if params.base is None:
        return load_or_build(QwenImageField, params, ctx, edit=True)
    what = f"qwenimage.edit's base {str(params.base)!r}"
    base = as_shared_field(ctx.field(params.base), QwenImageField, what)
    return base.spawn(base.adapter, edit=True)


def build_qwenimage_lora(params: QwenImageLoraParams, ctx: BuildContext) -> Any:
    """A LoRA adapter over a qwenimage base field; N adapters share one base transformer in memory."""
    from fieldkit.backbones.build import adapter_field
    from fieldkit_qwenimage.field import QwenImageField

    field = adapter_field(QwenImageField, params, ctx, "qwenimage.lora")
    return field if params.task is None else field.spawn(field.adapter, edit=params.task == "edit")


def build_guidance(params: GuidanceParams, ctx: BuildContext) -> Any:
    """True CFG as the Qwen-Image pipelines apply it (true_cfg_scale, the per-token norm rescale)."""
    from fieldkit_qwenimage.guidance import QwenImageGuidance

    return QwenImageGuidance(ctx.field(params.field), params.scale)


def _encoding(params: PromptParams | EditParams, ctx: BuildContext) -> Any:
    from fieldkit.backbones.build import encoding
    from fieldkit_qwenimage.data import Encoding

    return encoding(Encoding, params, ctx)


def build_prompts(params: PromptParams, ctx: BuildContext) -> Any:
    """T2I prompts with Qwen2.5-VL features computed once and cached to safetensors."""
    from fieldkit_qwenimage.data import prompt_bucket

    cache = ctx.path(params.cache) if params.cache else None
    return prompt_bucket(ctx.path(params.file), _encoding(params, ctx), template=params.template, cache=cache)


def build_edits(params: EditParams, ctx: BuildContext) -> Any:
    """Edit pairs with image-aware Qwen2.5-VL features and source latents, computed once and cached."""
    from fieldkit_qwenimage.data import edit_bucket

    cache = ctx.path(params.cache) if params.cache else None
    return edit_bucket(ctx.path(params.pairs), _encoding(params, ctx), template=params.template, cache=cache)


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register("qwenimage", build_qwenimage, QwenImageParams)
    register("qwenimage.edit", build_qwenimage_edit, QwenImageEditParams)
    register("qwenimage.lora", build_qwenimage_lora, QwenImageLoraParams)


@hookimpl
def fieldkit_register_operators(register: RegisterOperator) -> None:
    register("qwenimage.guidance", build_guidance, GuidanceParams)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register("qwenimage.prompts", build_prompts, PromptParams)
    register("qwenimage.edits", build_edits, EditParams)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    @cli.command(name="qwenimage-make-tiny")
    @click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
    @click.option("--seed", default=0, show_default=True, type=int)
    def qwenimage_make_tiny(folder: Path, seed: int) -> None:
        """Write tiny random Qwen-Image pipelines to FOLDER: FOLDER/t2i (QwenImagePipeline) and FOLDER/edit
        (QwenImageEditPipeline). examples/qwenimage/make_tiny.py builds the examples' whole tiny workspace."""
        from fieldkit_qwenimage.tiny import make_tiny_pipeline

        t2i = make_tiny_pipeline(folder / "t2i", seed=seed)
        edit = make_tiny_pipeline(folder / "edit", edit=True, seed=seed)
        click.echo(f"wrote {t2i} and {edit}")
