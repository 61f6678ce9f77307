"""fieldkit-plugin-zimage: Z-Image (diffusers) text-to-image and image-edit teachers and students.

Registers:

- source ``zimage``: a ``ZImageTransformer2DModel`` (local folder or config) as a velocity field
  (:mod:`fieldkit_zimage.field`); T2I, or an edit when the batch carries a source image;
- source ``zimage.edit``: the same as an edit field (``ZImageOmniPipeline``'s call), from its own folder or
  sharing the transformer of a ``base`` field;
- source ``zimage.lora``: a LoRA capability over a zimage base, sharing its weights in memory;
- datasets ``zimage.prompts`` and ``zimage.edits``: prompts, and edit pairs (source image, instruction,
  optional target), with cached text, VAE and SigLIP2 features (:mod:`fieldkit_zimage.data`);
- operator ``zimage.guidance``: classifier-free guidance as the pipelines apply it
  (:mod:`fieldkit_zimage.guidance`);
- command ``fieldkit zimage-make-tiny`` (tiny random pipelines for the CPU example,
  :mod:`fieldkit_zimage.tiny`).

diffusers, transformers and peft are imported inside factories and commands, never when fieldkit loads
the plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fieldkit.plugin_api import hookimpl
from fieldkit_zimage.params import (
    EditParams,
    GuidanceParams,
    PromptParams,
    ZImageEditParams,
    ZImageLoraParams,
    ZImageParams,
)

if TYPE_CHECKING:
    from fieldkit.plugin_api import BuildContext, RegisterDataset, RegisterOperator, RegisterSource

__version__ = "0.1.0"


def build_zimage(params: ZImageParams, ctx: BuildContext) -> Any:
    """A Z-Image transformer as a field: ``v = -transformer(x, 1 - sigma, text)`` (T2I, or an edit batch)."""
    from fieldkit.backbones.build import load_or_build
    from fieldkit_zimage.field import ZImageField

    return load_or_build(ZImageField, params, ctx, edit=False)


def build_zimage_edit(params: ZImageEditParams, ctx: BuildContext) -> Any:
    """A Z-Image Omni transformer as an edit field; with ``base``, over that field's transformer."""
    from fieldkit.backbones.build import load_or_build
    from fieldkit.backbones.field import as_shared_field
    from fieldkit_zimage.field import ZImageField

    if params.base is None:
        return load_or_build(ZImageField, params, ctx, edit=True)
    base = as_shared_field(ctx.field(params.base), ZImageField, f"zimage.edit's base {str(params.base)!r}")
    return base.spawn(base.adapter, edit=True)


def build_zimage_lora(params: ZImageLoraParams, ctx: BuildContext) -> Any:
    """A LoRA adapter over a zimage base field; N adapters share one base transformer in memory."""
    from fieldkit.backbones.build import adapter_field
    from fieldkit_zimage.field import ZImageField

    field = adapter_field(ZImageField, params, ctx, "zimage.lora")
    return field if params.task is None else field.spawn(field.adapter, edit=params.task == "edit")


def build_guidance(params: GuidanceParams, ctx: BuildContext) -> Any:
    """Guidance as the Z-Image pipelines apply it (scale, cfg_normalization, cfg_truncation)."""
    from fieldkit_zimage.guidance import ZImageGuidance

    return ZImageGuidance(
        ctx.field(params.field), params.scale, params.cfg_normalization, params.cfg_truncation
    )


def _encoding(params: PromptParams | EditParams, ctx: BuildContext) -> Any:
    from fieldkit.backbones.build import encoding
    from fieldkit_zimage.data import Encoding

    return encoding(Encoding, params, ctx)


def build_prompts(params: PromptParams, ctx: BuildContext) -> Any:
    """T2I prompts with Z-Image text features computed once and cached to safetensors."""
    from fieldkit_zimage.data import prompt_bucket

    cache = ctx.path(params.cache) if params.cache else None
    return prompt_bucket(ctx.path(params.file), _encoding(params, ctx), template=params.template, cache=cache)


def build_edits(params: EditParams, ctx: BuildContext) -> Any:
    """Edit pairs with text, VAE latents and SigLIP2 features computed once and cached to safetensors."""
    from fieldkit_zimage.data import edit_bucket

    cache = ctx.path(params.cache) if params.cache else None
    return edit_bucket(ctx.path(params.pairs), _encoding(params, ctx), template=params.template, cache=cache)


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register("zimage", build_zimage, ZImageParams)
    register("zimage.edit", build_zimage_edit, ZImageEditParams)
    register("zimage.lora", build_zimage_lora, ZImageLoraParams)


@hookimpl
def fieldkit_register_operators(register: RegisterOperator) -> None:
    register("zimage.guidance", build_guidance, GuidanceParams)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register("zimage.prompts", build_prompts, PromptParams)
    register("zimage.edits", build_edits, EditParams)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    @cli.command(name="zimage-make-tiny")
    @click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
    @click.option("--seed", default=0, show_default=True, type=int)
    def zimage_make_tiny(folder: Path, seed: int) -> None:
        """Write tiny random Z-Image pipelines to FOLDER: FOLDER/t2i (ZImagePipeline) and FOLDER/omni
        (ZImageOmniPipeline). examples/zimage/make_tiny.py builds the examples' whole tiny workspace."""
        from fieldkit_zimage.tiny import make_tiny_pipeline

        t2i = make_tiny_pipeline(folder / "t2i", seed=seed)
        omni = make_tiny_pipeline(folder / "omni", omni=True, seed=seed)
        click.echo(f"wrote {t2i} and {omni}")
