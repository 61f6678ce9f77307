"""The parameters of the plugin's types, as graphs write them (plain data; nothing heavy is imported)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fieldkit.backbones.params import (
    AdapterParams,
    BucketParams,
    EditBucketParams,
    PromptBucketParams,
    TransformerParams,
)
from fieldkit.plugin_api import FieldRef


class FluxParams(TransformerParams):
    """A FLUX.1 transformer, loaded from a local folder or built from a config."""

    guidance: float = Field(
        3.5,
        ge=0,
        description="distilled guidance (the pipelines' guidance_scale) of a guidance-embedding transformer "
        "(FLUX.1-dev, Kontext); ignored by one without (schnell)",
    )


class FluxKontextParams(TransformerParams):
    """A FLUX.1 Kontext transformer as an edit field: its own (path / config) or the one of a `base` field."""

    base: FieldRef | None = Field(None, description="a flux field whose transformer (and adapter) to share")
    guidance: float | None = Field(
        None, ge=0, description="distilled guidance; default: the base's, or 3.5 (the Kontext pipeline's)"
    )

    @model_validator(mode="after")
    def _one_origin(self) -> FluxKontextParams:
        if sum(x is not None for x in (self.base, self.path, self.config)) != 1:
            raise ValueError("give exactly one of `base` (share a field), `path` or `config`")
        return self


class FluxLoraParams(AdapterParams):
    """A LoRA capability over a flux base field (diffusers / peft, kohya or ai-toolkit layout: what
    FluxPipeline.load_lora_weights reads), sharing the base's weights in memory."""

    guidance: float | None = Field(None, ge=0, description="distilled guidance; default: the base's")
    task: Literal["t2i", "edit"] | None = Field(
        None, description="edit: refuse batches without a source image; default: the base's"
    )


class _Encoded(BucketParams):
    """What the data buckets share (:class:`~fieldkit.backbones.params.BucketParams`) and T5's length."""

    max_sequence_length: int = Field(512, ge=1, le=512, description="T5 tokens per prompt (512)")


class PromptParams(PromptBucketParams, _Encoded):
    """T2I prompts from a CSV / JSONL file, embedded once by FluxPipeline's T5 and CLIP encoders."""


class EditParams(EditBucketParams, _Encoded):
    """Edit pairs (source image, instruction, optional target), encoded once by FluxKontextPipeline."""

    auto_resize: bool = Field(
        True,
        description="resize sources to the preferred Kontext resolution of their aspect ratio, as the "
        "pipeline does by default (false: keep their size, cropped to multiples of 16)",
    )
