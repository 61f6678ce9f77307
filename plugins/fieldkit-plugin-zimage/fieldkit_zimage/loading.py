"""Load or build a ``ZImageTransformer2DModel``, and read the scheduler config of a pipeline folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fieldkit.models.diffusers_loading import load_model

if TYPE_CHECKING:
    from diffusers import ZImageTransformer2DModel


def load_transformer(
    path: Path, subfolder: str | None = None, dtype: torch.dtype | None = None
) -> ZImageTransformer2DModel:
    """``ZImageTransformer2DModel.from_pretrained`` from a local folder (nothing fetched), dtype checked.

    ``path`` is a pipeline folder (its ``transformer/`` is used) or a transformer folder (``config.json`` and
    safetensors, e.g. an exported student). ``dtype=None`` keeps the stored dtype.
    """
    return load_model(
        "ZImageTransformer2DModel",
        path,
        subfolder,
        dtype,
        hint="point `path` at a ZImagePipeline / ZImageOmniPipeline folder or a transformer folder",
    )


def build_transformer(
    config: dict[str, Any], seed: int = 0, dtype: torch.dtype | None = None
) -> ZImageTransformer2DModel:
    """A freshly initialised transformer from ``ZImageTransformer2DModel`` config keys, seeded."""
    from diffusers import ZImageTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ZImageTransformer2DModel.from_config(config)
    return (model.to(dtype) if dtype is not None else model).eval()
