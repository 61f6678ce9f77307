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


class QwenImageParams(TransformerParams):
    """A Qwen-Image transformer, loaded from a local folder or built from a config."""


class QwenImageEditParams(TransformerParams):
    """A Qwen-Image-Edit transformer as an edit field: its own (path / config) or a `base` field's."""

    base: FieldRef | None = Field(
        None, description="a qwenimage field whose transformer (and adapter) to share"
    )

    @model_validator(mode="after")
    def _one_origin(self) -> QwenImageEditParams:
        if sum(x is not None for x in (self.base, self.path, self.config)) != 1:
            raise ValueError("give exactly one of `base` (share a field), `path` or `config`")
        return self


class QwenImageLoraParams(AdapterParams):
    """A LoRA capability over a qwenimage base field (diffusers / peft, kohya or ComfyUI-style
    ``diffusion_model.`` layout: what QwenImagePipeline.load_lora_weights reads), sharing its base."""

    task: Literal["t2i", "edit"] | None = Field(
        None, description="edit: refuse batches without a source image; default: the base's"
    )


class GuidanceParams(Params):
    """True classifier-free guidance as the Qwen-Image pipelines apply it, with their norm rescale."""

    field: FieldRef
    scale: float = Field(
        ge=0,
        description="the pipelines' true_cfg_scale s: v = v_u + s (v_c - v_u), rescaled per token to |v_c|; "
        "s <= 1 is off",
    )


class _Encoded(BucketParams):
    """What the data buckets share (:class:`~fieldkit.backbones.params.BucketParams`), the pipelines'
    negative prompt by default."""

    negative_prompt: str = Field(" ", description="the text true CFG contrasts against (the pipelines': ' ')")


class PromptParams(_Encoded, PromptBucketParams):
    """T2I prompts from a CSV / JSONL file, embedded once by QwenImagePipeline's Qwen2.5-VL."""

    max_sequence_length: int = Field(512, ge=1, le=1024, description="Qwen2.5-VL tokens per prompt (512)")


class EditParams(_Encoded, EditBucketParams):
    """Edit pairs (source image, instruction, optional target), encoded once by QwenImageEditPipeline."""
