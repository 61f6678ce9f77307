"""The parameters of the plugin's types, as graphs write them (plain data; nothing heavy is imported)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fieldkit.backbones.params import AdapterParams, DType, TransformerParams
from fieldkit.plugin_api import Params


class SD3Params(TransformerParams):
    """An SD3 / SD3.5 transformer, loaded from a local folder or built from a config."""

    attention: Literal["fieldkit", "diffusers"] = Field(
        "fieldkit",
        description="fieldkit: joint attention through fieldkit.attention (run.attention applies); "
        "diffusers: SD3's stock processor (calls SDPA directly)",
    )


class SD3LoraParams(AdapterParams):
    """A LoRA capability over an sd3 base field, sharing the base's weights in memory."""


class PromptParams(Params):
    """Prompts or edit pairs from a CSV / JSONL file, embedded once by the pipeline's text encoders."""

    file: str = Field(description="a .csv (header row) or .jsonl file of prompts; relative to the graph")
    pipeline: str = Field(description="the SD3 / SD3.5 pipeline folder whose text encoders embed the prompts")
    shape: list[int] = Field(
        min_length=3, max_length=3, description="latent shape [C, H, W], e.g. [16, 128, 128] for 1024 px"
    )
    template: str = Field(
        "{prompt}", description="the text of a row, e.g. '{instruction}: {prompt}' for edits"
    )
    cache: str | None = Field(None, description="embedding cache; default: FILE.sd3-embeddings.safetensors")
    max_sequence_length: int = Field(256, ge=1, le=512, description="T5 tokens (SD3's default 256)")
    dtype: DType = Field("bfloat16", description="dtype of the text encoders and the cached embeddings")
