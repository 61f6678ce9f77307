"""Load or build an ``SD3Transformer2DModel`` (SD3 and SD3.5 configs, dual attention layers included)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fieldkit.errors import FieldkitError

if TYPE_CHECKING:
    from diffusers import SD3Transformer2DModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def transformer_subfolder(path: Path, subfolder: str | None) -> str | None:
    """``subfolder`` if given; else ``transformer`` for a pipeline folder; else the folder itself."""
    if subfolder is not None:
        return subfolder or None
    return "transformer" if (path / "transformer" / "config.json").is_file() else None


def load_transformer(
    path: Path, subfolder: str | None = None, dtype: torch.dtype | None = None
) -> SD3Transformer2DModel:
    """``SD3Transformer2DModel.from_pretrained`` from a local folder, nothing fetched; the dtype is checked.

    ``path`` is a pipeline folder (its ``transformer/`` is used) or a transformer folder (``config.json``
    and safetensors, e.g. an exported student). ``dtype=None`` keeps the stored dtype.
    """
    from diffusers import SD3Transformer2DModel

    sub = transformer_subfolder(path, subfolder)
    folder = path / sub if sub else path
    if not (folder / "config.json").is_file():
        raise FieldkitError(
            f"no SD3 transformer at {folder} (config.json missing)",
            hint="point `path` at an SD3 / SD3.5 pipeline folder or a transformer folder saved by diffusers",
        )
    model = SD3Transformer2DModel.from_pretrained(
        str(path), subfolder=sub, dtype=dtype, local_files_only=True
    )
    if dtype is not None and model.dtype != dtype:
        raise FieldkitError(
            f"{folder} loaded as {model.dtype}, not the asked {dtype}",
            hint="install accelerate (without it diffusers may ignore the dtype)",
        )
    return model.eval()


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
