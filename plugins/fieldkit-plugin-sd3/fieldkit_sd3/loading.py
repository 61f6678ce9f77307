"""Load or build an ``SD3Transformer2DModel`` (SD3 and SD3.5 configs, dual attention layers included)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fieldkit.errors import FieldkitError
from fieldkit.models.diffusers_loading import load_model

if TYPE_CHECKING:
    from diffusers import SD3Transformer2DModel


def load_transformer(
    path: Path, subfolder: str | None = None, dtype: torch.dtype | None = None
) -> SD3Transformer2DModel:
    """``SD3Transformer2DModel.from_pretrained`` from a local folder, nothing fetched; the dtype is checked.

    ``path`` is a pipeline folder (its ``transformer/`` is used) or a transformer folder (``config.json``
    and safetensors, e.g. an exported student). ``dtype=None`` keeps the stored dtype.
    """
    return load_model(
        "SD3Transformer2DModel",
        path,
        subfolder,
        dtype,
        hint="point `path` at an SD3 / SD3.5 pipeline folder or a transformer folder saved by diffusers",
    )


def build_transformer(
    config: dict[str, Any], seed: int = 0, dtype: torch.dtype | None = None
) -> SD3Transformer2DModel:
    """A freshly initialised transformer from config keys (``SD3Transformer2DModel.from_config``), seeded."""
    from diffusers import SD3Transformer2DModel

    hidden = config.get("num_attention_heads", 18) * config.get("attention_head_dim", 64)
    if config.get("caption_projection_dim", 1152) != hidden:
        raise FieldkitError(
            f"caption_projection_dim must equal num_attention_heads x attention_head_dim = {hidden}",
            hint="SD3 adds the projected text tokens to the image stream of that width",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SD3Transformer2DModel.from_config(config)
    return model.to(dtype) if dtype is not None else model
