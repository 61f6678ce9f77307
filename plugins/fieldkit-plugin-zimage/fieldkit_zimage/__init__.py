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

from fieldkit.backbones.register import Buckets, Sources, register_buckets, register_sources
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


def build_guidance(params: GuidanceParams, ctx: BuildContext) -> Any:
    """Guidance as the Z-Image pipelines apply it (scale, cfg_normalization, cfg_truncation)."""
    from fieldkit_zimage.guidance import ZImageGuidance

    return ZImageGuidance(
        ctx.field(params.field), params.scale, params.cfg_normalization, params.cfg_truncation
    )


SOURCES = Sources(
    "zimage",
    "fieldkit_zimage.field:ZImageField",
    base=(
        ZImageParams,
        "A Z-Image transformer as a field: ``v = -transformer(x, 1 - sigma, text)`` (T2I, or an edit batch).",
    ),
    edit=(
        ZImageEditParams,
        "A Z-Image Omni transformer as an edit field; with ``base``, over that field's transformer.",
    ),
    lora=ZImageLoraParams,
)
BUCKETS = Buckets(
    "zimage",
    "fieldkit_zimage.data",
    prompts=(PromptParams, "T2I prompts with Z-Image text features computed once and cached to safetensors."),
    edits=(
        EditParams,
        "Edit pairs with text, VAE latents and SigLIP2 features computed once and cached to safetensors.",
    ),
)


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register_sources(register, SOURCES)


@hookimpl
def fieldkit_register_operators(register: RegisterOperator) -> None:
    register("zimage.guidance", build_guidance, GuidanceParams)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register_buckets(register, BUCKETS)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    from fieldkit.plugin_api import seed_option

    @cli.command(name="zimage-make-tiny")
    @click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
    @seed_option()
    def zimage_make_tiny(folder: Path, seed: int) -> None:
        """Write tiny random Z-Image pipelines to FOLDER: FOLDER/t2i (ZImagePipeline) and FOLDER/omni
        (ZImageOmniPipeline). examples/zimage/make_tiny.py builds the examples' whole tiny workspace."""
        from fieldkit.plugin_api import check_new_folder
        from fieldkit_zimage.tiny import make_tiny_pipeline

        check_new_folder(folder, "folder of tiny models")
        t2i = make_tiny_pipeline(folder / "t2i", seed=seed)
        omni = make_tiny_pipeline(folder / "omni", omni=True, seed=seed)
        click.echo(f"wrote {t2i} and {omni}")
