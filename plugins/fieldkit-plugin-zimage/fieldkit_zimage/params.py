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
from fieldkit.plugin_api import FieldRef, Params


class ZImageParams(TransformerParams):
    """A Z-Image transformer, loaded from a local folder or built from a config."""


class ZImageEditParams(TransformerParams):
    """A Z-Image Omni transformer as an edit field: its own (path / config) or the one of a `base` field."""

    base: FieldRef | None = Field(None, description="a zimage field whose transformer (and adapter) to share")

    @model_validator(mode="after")
    def _one_origin(self) -> ZImageEditParams:
        if sum(x is not None for x in (self.base, self.path, self.config)) != 1:
            raise ValueError("give exactly one of `base` (share a field), `path` or `config`")
        return self


class ZImageLoraParams(AdapterParams):
    """A LoRA capability over a zimage base field, sharing the base's weights in memory."""

    task: Literal["t2i", "edit"] | None = Field(
        None, description="edit: refuse batches without a source image; default: the base's"
    )


class GuidanceParams(Params):
    """Classifier-free guidance with the Z-Image pipelines' parameters."""

    field: FieldRef
    scale: float = Field(
        ge=0, description="the pipelines' guidance_scale s: v = v_c + s (v_c - v_u); 0 is off"
    )
    cfg_normalization: float = Field(0.0, ge=0, description="cap |v| at c |v_c| per sample; 0 is off")
    cfg_truncation: float = Field(1.0, description="no guidance where 1 - sigma > this; 1 is off")


class _Encoded(BucketParams):
    """What the data buckets share (:class:`~fieldkit.backbones.params.BucketParams`) and Qwen3's length."""

    max_sequence_length: int = Field(512, ge=1, le=1024, description="Qwen3 tokens per text segment (512)")


class PromptParams(PromptBucketParams, _Encoded):
    """T2I prompts from a CSV / JSONL file, embedded once by ZImagePipeline's text encoder."""


class EditParams(EditBucketParams, _Encoded):
    """Edit pairs (source image, instruction, optional target), encoded once by ZImageOmniPipeline."""
