"""The parameters every diffusers backbone source shares, as graphs write them (torch-free: validating a
graph never imports torch). A plugin subclasses them to add its own keys (SD3's ``attention``, say)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from fieldkit.graph.refs import FieldRef
from fieldkit.plugins.registry import Params

DType = Literal["float32", "bfloat16", "float16"]


class TransformerParams(Params):
    """A diffusers transformer, loaded from a local folder or built from a config."""

    path: str | None = Field(
        None,
        description="pipeline folder (its transformer/ and scheduler/ are used) or transformer folder; "
        "relative to the graph",
    )
    subfolder: str | None = Field(
        None, description="default: 'transformer' when `path` has one, else `path` itself; '' forces `path`"
    )
    variant: str | None = Field(
        None, description="the weights variant to load, e.g. 'fp16' for diffusion_pytorch_model.fp16.*"
    )
    base_config: str | None = Field(
        None,
        description="when `path` is a single-file checkpoint (.safetensors): the pipeline or transformer "
        "folder of the same model, whose config (and scheduler) it is read with; relative to the graph",
    )
    config: dict[str, Any] | None = Field(
        None, description="build a freshly initialised transformer from these model config keys"
    )
    seed: int = Field(0, ge=0, lt=2**63, description="initialisation seed when built from `config`")
    dtype: DType | None = Field(None, description="load or cast to this dtype (checked); default: as stored")
    gradient_checkpointing: bool = Field(
        False, description="recompute each block's activations in the backward pass (a student that trains)"
    )

    @model_validator(mode="after")
    def _one_origin(self) -> TransformerParams:
        if (self.path is None) == (self.config is None):
            raise ValueError("give exactly one of `path` (load weights) or `config` (build from a config)")
        return self


class AdapterParams(Params):
    """A LoRA capability over a base field of the same backbone, sharing the base's weights in memory."""

    base: FieldRef = Field(description="the field whose transformer hosts the adapter")
    path: str = Field(description="LoRA folder or file in the diffusers / peft format (pytorch_lora_weights)")
    weight_name: str | None = Field(None, description="the weights file inside `path`, if not the default")
    adapter: str | None = Field(
        None, description="adapter name; default: from the LoRA's folder or file name"
    )
    scale: float = Field(1.0, description="LoRA scale: W x + scale (alpha / r) B A x")


class BucketParams(Params):
    """What a backbone's data buckets share: the pipeline whose encoders embed, the latent shape, the negative
    prompt (the null text guidance contrasts against), the cache and the encoders' dtype. A plugin subclasses
    it with its rows (``file`` / ``pairs``, ``template``) and, where its encoder has one, a
    ``max_sequence_length`` with its own bounds."""

    pipeline: str = Field(
        description="the pipeline folder whose encoders embed the data; relative to the graph"
    )
    shape: list[int] = Field(
        min_length=3, max_length=3, description="latent shape [C, H, W], e.g. [16, 128, 128] for 1024 px"
    )
    negative_prompt: str = Field("", description="the null text guidance contrasts against")
    cache: str | None = Field(None, description="feature cache; default: beside the data")
    dtype: DType = Field("bfloat16", description="dtype of the encoders and of the cache")


class PromptBucketParams(BucketParams):
    """A bucket of prompts: a CSV / JSONL file, a row's text filled from its columns. Mind the bases' order
    when a plugin's own :class:`BucketParams` subclass is the other base: the first base's defaults win (a
    base that overrides ``negative_prompt`` goes first), and keys a base adds come after this one's unless
    it is listed second (``class PromptParams(PromptBucketParams, MyEncoded)``)."""

    file: str = Field(description="a .csv (header row) or .jsonl file of prompts; relative to the graph")
    template: str = Field("{prompt}", description="the text of a row, filled from its columns")


class EditBucketParams(BucketParams):
    """A bucket of edit pairs (source image, instruction, optional target), from a file or a folder
    (:mod:`fieldkit.backbones.pairs`); the bases' order as for :class:`PromptBucketParams`."""

    pairs: str = Field(
        description="a .csv / .jsonl file (columns source, instruction, target) or a folder of NAME.png + "
        "NAME.txt (+ NAME.target.png); relative to the graph"
    )
    template: str = Field("{instruction}", description="the text of a pair, filled from its columns")
