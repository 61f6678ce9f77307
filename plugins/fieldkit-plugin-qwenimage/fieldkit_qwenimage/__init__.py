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

from fieldkit.backbones.register import Buckets, Sources, register_buckets, register_sources
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


def build_guidance(params: GuidanceParams, ctx: BuildContext) -> Any:
    """True CFG as the Qwen-Image pipelines apply it (true_cfg_scale, the per-token norm rescale)."""
    from fieldkit_qwenimage.guidance import QwenImageGuidance

    return QwenImageGuidance(ctx.field(params.field), params.scale)


SOURCES = Sources(
    "qwenimage",
    "fieldkit_qwenimage.field:QwenImageField",
    base=(
        QwenImageParams,
        "A Qwen-Image transformer as a field: ``v = transformer(pack(x), sigma, text, text_mask)``.",
    ),
    edit=(
        QwenImageEditParams,
        "A Qwen-Image-Edit transformer as an edit field; with ``base``, over that field's transformer.",
    ),
    lora=QwenImageLoraParams,
)
BUCKETS = Buckets(
    "qwenimage",
    "fieldkit_qwenimage.data",
    prompts=(PromptParams, "T2I prompts with Qwen2.5-VL features computed once and cached to safetensors."),
    edits=(
        EditParams,
        "Edit pairs with image-aware Qwen2.5-VL features and source latents, computed once and cached.",
    ),
)


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register_sources(register, SOURCES)


@hookimpl
def fieldkit_register_operators(register: RegisterOperator) -> None:
    register("qwenimage.guidance", build_guidance, GuidanceParams)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register_buckets(register, BUCKETS)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    from fieldkit.plugin_api import seed_option

    @cli.command(name="qwenimage-make-tiny")
    @click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
    @seed_option()
    def qwenimage_make_tiny(folder: Path, seed: int) -> None:
        """Write tiny random Qwen-Image pipelines to FOLDER: FOLDER/t2i (QwenImagePipeline) and FOLDER/edit
        (QwenImageEditPipeline). examples/qwenimage/make_tiny.py builds the examples' whole tiny workspace."""
        from fieldkit.plugin_api import check_new_folder
        from fieldkit_qwenimage.tiny import make_tiny_pipeline

        check_new_folder(folder, "folder of tiny models")
        t2i = make_tiny_pipeline(folder / "t2i", seed=seed)
        edit = make_tiny_pipeline(folder / "edit", edit=True, seed=seed)
        click.echo(f"wrote {t2i} and {edit}")
