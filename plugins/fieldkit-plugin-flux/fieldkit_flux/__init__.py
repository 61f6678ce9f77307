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
from typing import TYPE_CHECKING

import click

from fieldkit.backbones.register import Buckets, Sources, register_buckets, register_sources
from fieldkit.plugin_api import hookimpl
from fieldkit_flux.params import EditParams, FluxKontextParams, FluxLoraParams, FluxParams, PromptParams

if TYPE_CHECKING:
    from fieldkit.plugin_api import RegisterDataset, RegisterSource

__version__ = "0.1.0"


def _guidance(params: FluxParams | FluxKontextParams | FluxLoraParams) -> dict[str, float]:
    """The field's distilled guidance, where ``params`` give one (the base's otherwise)."""
    return {} if params.guidance is None else {"guidance": params.guidance}


SOURCES = Sources(
    "flux",
    "fieldkit_flux.field:FluxField",
    base=(
        FluxParams,
        "A FLUX.1 transformer as a field: ``v = transformer(pack(x), sigma, guidance, text, pooled)``.",
    ),
    edit=(
        FluxKontextParams,
        "A FLUX.1 Kontext transformer as an edit field; with ``base``, over that field's transformer.",
    ),
    lora=FluxLoraParams,
    edit_name="kontext",
    options=_guidance,
    edit_defaults={"guidance": 3.5},
)
BUCKETS = Buckets(
    "flux",
    "fieldkit_flux.data",
    prompts=(
        PromptParams,
        "T2I prompts with FLUX's T5 and CLIP features computed once and cached to safetensors.",
    ),
    edits=(
        EditParams,
        "Kontext edit pairs with text features and source latents computed once and cached to safetensors.",
    ),
    edit_options=("auto_resize",),
)


@hookimpl
def fieldkit_register_sources(register: RegisterSource) -> None:
    register_sources(register, SOURCES)


@hookimpl
def fieldkit_register_datasets(register: RegisterDataset) -> None:
    register_buckets(register, BUCKETS)


@hookimpl
def fieldkit_register_commands(cli: click.Group) -> None:
    from fieldkit.plugin_api import seed_option

    @cli.command(name="flux-make-tiny")
    @click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
    @seed_option()
    def flux_make_tiny(folder: Path, seed: int) -> None:
        """Write tiny random FLUX.1 pipelines to FOLDER: FOLDER/t2i (FluxPipeline) and FOLDER/kontext
        (FluxKontextPipeline). examples/flux/make_tiny.py builds the examples' whole tiny workspace."""
        from fieldkit.plugin_api import check_new_folder
        from fieldkit_flux.tiny import make_tiny_pipeline

        check_new_folder(folder, "folder of tiny models")
        t2i = make_tiny_pipeline(folder / "t2i", seed=seed)
        kontext = make_tiny_pipeline(folder / "kontext", kontext=True, seed=seed)
        click.echo(f"wrote {t2i} and {kontext}")
