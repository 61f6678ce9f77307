"""fieldkit-plugin-flux: FLUX.1 (diffusers) text-to-image and Kontext image-edit teachers and students.

Registers:

- source ``flux``: a ``FluxTransformer2DModel`` (local folder or config) as a velocity field
  (:mod:`fieldkit_flux.field`), with FLUX.1-dev's distilled guidance as its ``guidance`` parameter; T2I, or a
  Kontext edit when the batch carries a source latent;
- source ``flux.kontext``: the same as an edit field (``FluxKontextPipeline``'s call), from its own folder or
  sharing the transformer of a ``base`` field;
- source ``flux.lora``: a LoRA capability over a flux base, sharing its weights in memory;
- datasets ``flux.prompts`` and ``flux.edits``: prompts, and edit pairs (source image, instruction,
  optional target), with cached T5 / CLIP features and source latents (:mod:`fieldkit_flux.data`);
- command ``fieldkit flux-make-tiny`` (tiny random pipelines for the CPU example, :mod:`fieldkit_flux.tiny`).

The pipelines' true CFG over a negative prompt is fieldkit's own ``guidance`` operator (``w`` is their
``true_cfg_scale``); ``fieldkit export RUN --format peft`` writes a LoRA student that both pipelines'
``load_lora_weights`` read. diffusers, transformers and peft are imported inside factories and commands,
never when fieldkit loads the plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fieldkit.plugin_api import hookimpl
from fieldkit_flux.params import EditParams, FluxKontextParams, FluxLoraParams, FluxParams, PromptParams

if TYPE_CHECKING:
    from fieldkit.plugin_api import BuildContext, RegisterDataset, RegisterSource

__version__ = "0.1.0"


def build_flux(params: FluxParams, ctx: BuildContext) -> Any:
    """A FLUX.1 transformer as a field: ``v = transformer(pack(x), sigma, guidance, text, pooled)``."""
    from fieldkit.backbones.build import load_or_build
    from fieldkit_flux.field import FluxField

    return load_or_build(FluxField, params, ctx, guidance=params.guidance)


def build_flux_kontext(params: FluxKontextParams, ctx: BuildContext) -> Any:
    """A FLUX.1 Kontext transformer as an edit field; with ``base``, over that field's transformer."""
    from fieldkit.backbones.build import load_or_build
    from fieldkit.backbones.field import as_shared_field
    from fieldkit_flux.field import FluxField

    if params.base is None:
        guidance = 3.5 if params.guidance is None else params.guidance
        return load_or_build(FluxField, params, ctx, guidance=guidance, edit=True)
    base = as_shared_field(ctx.field(params.base), FluxField, f"flux.kontext's base {str(params.base)!r}")
    return base.spawn(base.adapter, edit=True, **_guidance(params.guidance))


def build_flux_lora(params: FluxLoraParams, ctx: BuildContext) -> Any:
    """A LoRA adapter over a flux base field; N adapters share one base transformer in memory."""
    from fieldkit.backbones.build import adapter_field
    from fieldkit_flux.field import FluxField

    field = adapter_field(FluxField, params, ctx, "flux.lora")
    task = {} if params.task is None else {"edit": params.task == "edit"}
    return field.spawn(field.adapter, **task, **_guidance(params.guidance))


def _guidance(value: float | None) -> dict[str, float]:
    return {} if value is None else {"guidance": value}


def _encoding(params: PromptParams | EditParams, ctx: BuildContext) -> Any:
    from fieldkit.backbones.build import encoding
    from fieldkit_flux.data import Encoding

    return encoding(Encoding, params, ctx)


def build_prompts(params: PromptParams, ctx: BuildContext) -> Any:
    """T2I prompts with FLUX's T5 and CLIP features computed once and cached to safetensors."""
    from fieldkit_flux.data import prompt_bucket

    cache = ctx.path(params.cache) if params.cache else None
    return prompt_bucket(ctx.path(params.file), _encoding(params, ctx), template=params.template, cache=cache)


def build_edits(params: EditParams, ctx: BuildContext) -> Any:
    """Kontext edit pairs with text features and source latents computed once and cached to safetensors."""
    from fieldkit_flux.data import edit_bucket

    cache = ctx.path(params.cache) if params.cache else None
    return edit_bucket(
        ctx.path(params.pairs),
        _encoding(params, ctx),
        template=params.template,
        cache=cache,
        auto_resize=params.auto_resize,
    )


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register("flux", build_flux, FluxParams)
    register("flux.kontext", build_flux_kontext, FluxKontextParams)
    register("flux.lora", build_flux_lora, FluxLoraParams)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register("flux.prompts", build_prompts, PromptParams)
    register("flux.edits", build_edits, EditParams)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    @cli.command(name="flux-make-tiny")
    @click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
    @click.option("--seed", default=0, show_default=True, type=int)
    def flux_make_tiny(folder: Path, seed: int) -> None:
        """Write tiny random FLUX.1 pipelines to FOLDER: FOLDER/t2i (FluxPipeline) and FOLDER/kontext
        (FluxKontextPipeline). examples/flux/make_tiny.py builds the examples' whole tiny workspace."""
        from fieldkit_flux.tiny import make_tiny_pipeline

        t2i = make_tiny_pipeline(folder / "t2i", seed=seed)
        kontext = make_tiny_pipeline(folder / "kontext", kontext=True, seed=seed)
        click.echo(f"wrote {t2i} and {kontext}")
