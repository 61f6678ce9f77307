"""The parameters of the plugin's types, as graphs write them (plain data; nothing heavy is imported)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fieldkit.graph.refs import FieldRef
from fieldkit.plugins.registry import Params

DType = Literal["float32", "bfloat16", "float16"]


class SD3Params(Params):
    """An SD3 / SD3.5 transformer, loaded from a local folder or built from a config."""

    path: str | None = Field(
        None,
        description="pipeline folder (its transformer/ is used) or transformer folder; relative to the graph",
    )
    subfolder: str | None = Field(
        None, description="default: 'transformer' when `path` has one, else `path` itself; '' forces `path`"
    )
    config: dict[str, Any] | None = Field(
        None,
        description="build a freshly initialised transformer from these SD3Transformer2DModel config keys",
    )
    seed: int = Field(0, description="initialisation seed when built from `config`")
    dtype: DType | None = Field(None, description="load or cast to this dtype (checked); default: as stored")
    attention: Literal["fieldkit", "diffusers"] = Field(
        "fieldkit",
        description="fieldkit: joint attention through fieldkit.attention (run.attention applies); "
        "diffusers: SD3's stock processor (calls SDPA directly)",
    )
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations in the backward pass (a student that trains)"
    )

    @model_validator(mode="after")
    def _one_origin(self) -> SD3Params:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of `path` (load weights) or `config` (build from a config)")
        return self


class SD3LoraParams(Params):
    """A LoRA capability over an sd3 base field, sharing the base's weights in memory."""

    base: FieldRef = Field(description="the sd3 field whose transformer hosts the adapter")
    path: str = Field(description="LoRA folder or file in the diffusers / peft format (pytorch_lora_weights)")
    weight_name: str | None = Field(None, description="the weights file inside `path`, if not the default")
    adapter: str | None = Field(
        None, description="adapter name; default: from the LoRA's folder or file name"
    )
    scale: float = Field(1.0, description="LoRA scale: W x + scale (alpha / r) B A x")


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
